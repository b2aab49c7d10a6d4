"""A real DAP client that attaches the way VSCode does (``fi-dist eval``, tests, benchmarks).

``JobClient.attach(config)`` connects to the hub's one port, sends ``initialize`` with
``supportsStartDebuggingRequest``, ``attach`` with the launch.json configuration,
its breakpoints and ``configurationDone``; every ``startDebugging`` reverse request (or
``debugpyAttach`` event) opens a child connection to the same port for one rank.
Events that arrive before a response (debugpy's ``output`` telemetry) are queued, not
mistaken for the answer. Client side: the in-job runtime never imports it.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from fi_dist.runtime.debug.protocol import ProtocolError, SyncChannel


class DapError(Exception):
    """A request failed or the session ended before its response."""


class DapSession:
    """One DAP connection: requests with responses, an event queue, reverse requests."""

    def __init__(self, host: str, port: int, name: str = "session",
                 on_reverse: Callable[[DapSession, dict[str, Any]], None] | None = None) -> None:
        self.name = name
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.chan = SyncChannel(self.sock)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.on_reverse = on_reverse
        self.closed = threading.Event()
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._reader = threading.Thread(target=self._read, name=f"dap-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while (msg := self.chan.read()) is not None:
                kind = msg["type"]
                if kind == "response":
                    waiter = self._pending.pop(msg["request_seq"], None)
                    if waiter is not None:
                        waiter[1].append(msg)
                        waiter[0].set()
                elif kind == "event":
                    msg["_t"] = time.perf_counter()
                    self.events.put(msg)
                elif self.on_reverse is not None:
                    self.on_reverse(self, msg)
        except (OSError, ProtocolError):
            pass
        finally:
            self.closed.set()
            for ev, _ in list(self._pending.values()):
                ev.set()

    def send_request(self, command: str, arguments: dict[str, Any] | None = None
                     ) -> tuple[threading.Event, list[dict[str, Any]]]:
        with self._lock:
            seq = next(self._seq)
            waiter: tuple[threading.Event, list[dict[str, Any]]] = (threading.Event(), [])
            self._pending[seq] = waiter
            msg: dict[str, Any] = {"seq": seq, "type": "request", "command": command}
            if arguments is not None:
                msg["arguments"] = arguments
            self.chan.send(msg)
        return waiter

    def wait_response(self, waiter: tuple[threading.Event, list[dict[str, Any]]],
                      timeout: float = 30, check: bool = True) -> dict[str, Any]:
        if not waiter[0].wait(timeout) or not waiter[1]:
            raise DapError(f"{self.name}: no response within {timeout}s (closed: "
                           f"{self.closed.is_set()})")
        resp = waiter[1][0]
        if check and not resp.get("success"):
            raise DapError(f"{self.name}: {resp.get('command')} failed: {resp.get('message')}")
        return resp

    def request(self, command: str, arguments: dict[str, Any] | None = None,
                timeout: float = 30, check: bool = True) -> dict[str, Any]:
        return self.wait_response(self.send_request(command, arguments), timeout, check)

    def respond(self, req: dict[str, Any], body: dict[str, Any] | None = None) -> None:
        with self._lock:
            self.chan.send({"seq": next(self._seq), "type": "response",
                            "request_seq": req["seq"], "command": req["command"],
                            "success": True, "body": body or {}})

    def wait_event(self, name: str, timeout: float = 30,
                   pred: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next event called ``name`` (others are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DapError(f"{self.name}: no {name!r} event within {timeout}s")
            try:
                ev = self.events.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.closed.is_set():
                    raise DapError(f"{self.name}: closed while waiting for {name!r}") from None
                continue
            if ev.get("event") == name and (pred is None or pred(ev)):
                return ev

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def handshake(session: DapSession, config: dict[str, Any],
              breakpoints: dict[str, list[int]] | None = None,
              exception_filters: list[str] | None = None, timeout: float = 60) -> None:
    """initialize, attach, breakpoints, configurationDone, as VSCode orders them."""
    session.request("initialize", {"clientID": "vscode", "adapterID": "debugpy",
                                   "pathFormat": "path", "linesStartAt1": True,
                                   "columnsStartAt1": True,
                                   "supportsStartDebuggingRequest": True}, timeout)
    attach = session.send_request("attach", config)
    deadline = time.monotonic() + timeout
    while True:  # a refused attach answers at once, with no "initialized" event
        if attach[0].is_set() and attach[1] and not attach[1][0].get("success"):
            session.wait_response(attach, 0)
        try:
            session.wait_event("initialized", 0.5)
            break
        except DapError:
            if time.monotonic() > deadline:
                raise
    for path, lines in (breakpoints or {}).items():
        session.request("setBreakpoints", {"source": {"path": path},
                                           "breakpoints": [{"line": n} for n in lines]}, timeout)
    session.request("setExceptionBreakpoints", {"filters": exception_filters or []}, timeout)
    session.request("configurationDone", None, timeout)
    session.wait_response(attach, timeout)


class JobClient:
    """The root session plus one child session per rank, like VSCode with debugpy."""

    def __init__(self, config: dict[str, Any], breakpoints: dict[str, list[int]] | None = None,
                 exception_filters: list[str] | None = None) -> None:
        self.config = config
        self.breakpoints = breakpoints or {}
        self.exception_filters = exception_filters or []
        host, port = config["connect"]["host"], config["connect"]["port"]
        self.address = (host, int(port))
        self.children: dict[int, DapSession] = {}
        self.child_names: dict[int, str] = {}
        self.errors: list[str] = []
        self._children_changed = threading.Condition()
        self.root = DapSession(host, int(port), "root", on_reverse=self._reverse)

    def attach(self, timeout: float = 60) -> None:
        handshake(self.root, self.config, self.breakpoints, self.exception_filters, timeout)

    def _reverse(self, session: DapSession, req: dict[str, Any]) -> None:
        if req.get("command") == "startDebugging":
            session.respond(req)
            config = (req.get("arguments") or {}).get("configuration") or {}
            threading.Thread(target=self._open_child, args=(config,), daemon=True).start()

    def _open_child(self, config: dict[str, Any]) -> None:
        rank = int(config.get("fiDistRank", -1))
        try:
            conn = config["connect"]
            child = DapSession(conn["host"], int(conn["port"]), str(config.get("name")))
            handshake(child, config, self.breakpoints, self.exception_filters)
        except (OSError, DapError, KeyError) as exc:
            self.errors.append(f"child {config.get('name')}: {exc}")
            return
        with self._children_changed:
            self.children[rank] = child
            self.child_names[rank] = str(config.get("name"))
            self._children_changed.notify_all()

    def wait_children(self, count: int, timeout: float = 60) -> dict[int, DapSession]:
        """Block until ``count`` child sessions finished their handshake."""
        deadline = time.monotonic() + timeout
        with self._children_changed:
            while len(self.children) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DapError(f"{len(self.children)}/{count} child sessions after "
                                   f"{timeout}s; errors: {self.errors}")
                self._children_changed.wait(min(left, 0.5))
        return dict(self.children)

    def top_frame(self, rank: int, thread_id: int | None = None) -> dict[str, Any]:
        """The top stack frame of rank ``rank``'s stopped (or first) thread."""
        child = self.children[rank]
        if thread_id is None:
            threads = child.request("threads")["body"]["threads"]
            thread_id = threads[0]["id"]
        frames = child.request("stackTrace", {"threadId": thread_id, "startFrame": 0,
                                              "levels": 1})["body"]["stackFrames"]
        return frames[0]

    def evaluate(self, rank: int, expression: str, frame_id: int) -> str:
        body = self.children[rank].request("evaluate", {"expression": expression,
                                                        "frameId": frame_id,
                                                        "context": "repl"})["body"]
        return str(body.get("result"))

    def close(self) -> None:
        for child in self.children.values():
            child.close()
        with contextlib.suppress(DapError, OSError):
            self.root.request("disconnect", {"terminateDebuggee": False}, timeout=5)
        self.root.close()
