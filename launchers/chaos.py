"""``fi-dist chaos``: network faults on a running netns job, applied by the job's own launcher.

The launcher owns the run's namespaces (it holds them open), so it is the one that
changes them: ``fi-dist chaos --node K FAULT`` sends the fault to the launcher over a
local control socket (:func:`request`), the launcher applies it (switch port down/up
for partition and heal, :mod:`~fi_dist.launchers.netem` for delay and loss), records
it in the run directory (``chaos.jsonl``) and lists it in the job's summary.

The control socket is an abstract Unix socket named after the run (no file to leave
behind); the launcher serves only peers of its own user (``SO_PEERCRED``), one small
JSON line each way.

:class:`NodeFaults` is what a node suffers now; :meth:`NodeFaults.apply` is pure.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fi_dist.errors import LauncherError
from fi_dist.launcher import Fault
from fi_dist.launchers.netem import Shape

log = logging.getLogger("fi_dist.launchers.chaos")

MAX_REQUEST = 4096
"""Longest control request accepted (a fault is a few dozen bytes)."""


@dataclass(frozen=True)
class NodeFaults:
    """The faults node K's network has now."""

    partitioned: bool = False
    shape: Shape = field(default_factory=Shape)

    def apply(self, fault: Fault) -> NodeFaults:
        """The node's faults after ``fault`` (``heal`` clears them all)."""
        if fault.kind == "heal":
            return NodeFaults()
        if fault.kind == "partition":
            return replace(self, partitioned=True)
        if fault.kind == "delay":
            return replace(self, shape=replace(self.shape, delay_ms=fault.ms,
                                               jitter_ms=fault.jitter_ms))
        return replace(self, shape=replace(self.shape, loss_pct=fault.pct))

    def describe(self) -> str:
        parts = ["partitioned"] if self.partitioned else []
        if self.shape.delay_ms or self.shape.jitter_ms:
            parts.append(f"delay {self.shape.delay_ms:g} ms"
                         + (f" +- {self.shape.jitter_ms:g} ms" if self.shape.jitter_ms else ""))
        if self.shape.loss_pct:
            parts.append(f"loss {self.shape.loss_pct:g}%")
        return ", ".join(parts) or "no faults"


def fault_to_dict(fault: Fault) -> dict[str, Any]:
    return {"kind": fault.kind, "ms": fault.ms, "jitter_ms": fault.jitter_ms, "pct": fault.pct}


def fault_from_dict(data: Any) -> Fault:
    if not isinstance(data, dict):
        raise ValueError("fault is not an object")
    return Fault(kind=str(data.get("kind")), ms=float(data.get("ms", 0)),
                 jitter_ms=float(data.get("jitter_ms", 0)), pct=float(data.get("pct", 0)))


def control_address(run_id: str) -> str:
    """The run's abstract socket name (no file on disk)."""
    return f"\0fi-dist-chaos-{run_id}"


Handler = Callable[[int, Fault], str]
"""Applies a fault to a node; returns what was done, raises LauncherError to refuse."""


class ControlServer:
    """The launcher's end: serves ``fi-dist chaos`` requests for one run."""

    def __init__(self, run_id: str, handle: Handler) -> None:
        self.handle = handle
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(control_address(run_id))
        self.sock.listen(8)
        self.sock.settimeout(0.5)
        self._closed = False
        self._lock = threading.Lock()  # one fault at a time
        threading.Thread(target=self._serve, name="fi-dist-chaos", daemon=True).start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    reply = self._one(conn)
                except (OSError, ValueError) as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    def _one(self, conn: socket.socket) -> dict[str, Any]:
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid not in (0, os.geteuid()):
            return {"ok": False, "error": f"uid {uid} may not change this job's network"}
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(MAX_REQUEST)
            if not chunk or len(data) + len(chunk) > MAX_REQUEST:
                raise ValueError("no complete request")
            data += chunk
        req = json.loads(data)
        fault = fault_from_dict(req.get("fault"))
        node = req.get("node")
        if not isinstance(node, int):
            raise ValueError("node is not an integer")
        with self._lock:
            try:
                return {"ok": True, "message": self.handle(node, fault)}
            except LauncherError as exc:
                return {"ok": False, "error": str(exc)}
            except Exception as exc:  # a failed tc/ip: say so, keep serving
                log.warning("fi-dist chaos: %s failed: %s", fault.describe(), exc)
                return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        self._closed = True
        self.sock.close()


def request(run_id: str, node: int, fault: Fault, timeout: float = 60.0) -> str:
    """Ask the launcher of ``run_id`` to apply ``fault`` to ``node``; returns its answer.

    Raises:
        LauncherError: the launcher is not reachable or refused.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(control_address(run_id))
            s.sendall(json.dumps({"node": node, "fault": fault_to_dict(fault)}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(MAX_REQUEST)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise LauncherError(f"cannot reach the launcher of run {run_id} "
                                f"({exc.strerror or exc}): is it running with --network netns?"
                                ) from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise LauncherError(f"the launcher of run {run_id} gave no answer") from None
    if not reply.get("ok"):
        raise LauncherError(str(reply.get("error")))
    return str(reply.get("message"))
