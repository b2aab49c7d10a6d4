"""Find and end a local job's processes by the run id in their environment.

Every process of a local job inherits ``FI_DIST_RUN_ID`` (and its node's
``FI_DIST_NODE_RANK``). torchelastic starts each rank in a new session, so process
groups alone cannot reach them; scanning ``/proc/*/environ`` can, which is how the
launcher guarantees no orphan survives a run and how ``fi-dist preempt`` reaches
every process of one "pod".
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fi_dist import env_vars as ev


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = value.decode(errors="replace")
    return out


def job_processes(run_id: str, node: int | None = None) -> list[int]:
    """PIDs of live processes carrying ``run_id`` (and ``node``, if given)."""
    me = os.getpid()
    pids: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        env = _environ(int(entry))
        if env.get(ev.FI_DIST_RUN_ID) != run_id:
            continue
        if node is not None and env.get(ev.FI_DIST_NODE_RANK) != str(node):
            continue
        if _is_zombie(int(entry)):
            continue
        pids.append(int(entry))
    return pids


def identity(pid: int) -> str:
    """``PID:STARTTIME`` of a live process ('' when it is gone): unique despite pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return f"{pid}:{stat.rsplit(')', 1)[-1].split()[19]}"


def orphans() -> list[int]:
    """Live processes of local jobs whose launcher (``FI_DIST_OWNER``) is gone."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        owner = _environ(int(entry)).get(ev.FI_DIST_OWNER)
        if not owner or _is_zombie(int(entry)):
            continue
        pid, _, _ = owner.partition(":")
        if pid.isdigit() and identity(int(pid)) != owner:
            out.append(int(entry))
    return out


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate(run_id: str, node: int | None = None, grace: float = 30.0, poll: float = 0.1) -> int:
    """SIGTERM every process of the job (or node), SIGKILL what is left after ``grace``.

    Returns:
        How many processes had to be SIGKILLed.
    """
    signal_pids(job_processes(run_id, node), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not job_processes(run_id, node):
            return 0
        time.sleep(poll)
    left = job_processes(run_id, node)
    signal_pids(left, signal.SIGKILL)
    return len(left)


class StartError(RuntimeError):
    """A helper process did not announce itself; the message holds its last output."""


class ReadyProcess:
    """A helper process that printed its ready line; the rest of its output goes on.

    Its further output is copied to this process's stderr by a daemon thread.
    """

    def __init__(self, proc: subprocess.Popen[str], ready: str) -> None:
        self.proc = proc
        self.ready = ready
        """The ready line, e.g. ``fi-dist-hub-ready 5678 41233``."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_ready(argv: list[str], ready: str, env: dict[str, str] | None = None,
                cwd: str | None = None, timeout: float = 30.0) -> ReadyProcess:
    """Start ``argv`` and wait until it prints a line starting with ``ready``.

    Raises:
        StartError: it exited or stayed silent for ``timeout`` seconds.
    """
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    found: list[str] = []

    def wait_ready() -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            if text.startswith(ready):
                found.append(text.strip())
                return
            seen.append(text)
            sys.stderr.write(text)

    reader = threading.Thread(target=wait_ready, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        proc.kill()
        proc.wait()
        raise StartError("".join(seen[-20:]) or f"no output in {timeout:g}s")
    threading.Thread(target=_copy_to_stderr, args=(proc.stdout,), daemon=True).start()
    return ReadyProcess(proc, found[0])


def _copy_to_stderr(stream: Any) -> None:
    for text in stream:
        sys.stderr.write(text)
        sys.stderr.flush()
