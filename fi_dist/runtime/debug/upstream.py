"""The hub's side of one rank: its control link and its DAP session with the rank's adapter.

The hub is the only client of every rank's debugpy adapter. IDE child sessions are
views onto that session: their requests are forwarded with fresh sequence numbers
(so hub-originated requests such as the break-all ``pause`` never collide with the
IDE's), and responses are mapped back to the IDE's ``seq``.

A rank's break-all state (``RankLink.machine``: running, pausing, blocked, stopped,
exited, plus the held / pause-owed flags) is the state machine of
:mod:`fi_dist.runtime.debug.breakall`; its :class:`~fi_dist.runtime.debug.breakall.RankState`
docstring draws the diagram. Only the hub steps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fi_dist.runtime.debug.breakall import Rank, RankState
from fi_dist.runtime.debug.protocol import ProtocolError, encode, line, read_message

log = logging.getLogger("fi_dist.debug.hub")

Sink = Callable[[dict[str, Any]], None]
"""Where a forwarded response goes (an IDE session's send)."""


class Upstream:
    """A DAP session with one rank's adapter, spoken through the rank agent's relay."""

    def __init__(self, label: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 on_event: Callable[[dict[str, Any]], None]) -> None:
        self.label = label
        self.reader = reader
        self.writer = writer
        self.on_event = on_event
        self.capabilities: dict[str, Any] = {}
        self.closed = asyncio.Event()
        self.configured = False
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._routes: dict[int, tuple[Sink, int]] = {}
        self._initialized = asyncio.Event()
        self.applied: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.applied_filters: tuple[dict[str, Any], dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    def _send(self, msg: dict[str, Any]) -> None:
        if self.closed.is_set():
            raise ConnectionError(f"{self.label}: debug session closed")
        self.writer.write(encode(msg))

    def request(self, command: str, arguments: dict[str, Any] | None = None
                ) -> asyncio.Future[dict[str, Any]]:
        """Send a hub-originated request; the future gets the whole response."""
        seq = next(self._seq)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        msg: dict[str, Any] = {"seq": seq, "type": "request", "command": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self._send(msg)
        return fut

    def fire(self, command: str, arguments: dict[str, Any] | None = None) -> None:
        """A hub-originated request whose response is swallowed."""
        try:
            fut = self.request(command, arguments)
        except ConnectionError:
            return
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def forward(self, msg: dict[str, Any], sink: Sink) -> None:
        """Forward an IDE request; the response goes to ``sink`` with the IDE's seq."""
        seq = next(self._seq)
        self._routes[seq] = (sink, int(msg.get("seq", 0)))
        self._send({**msg, "seq": seq})

    async def open(self) -> None:
        """Start reading and send ``initialize`` (done ahead of any IDE: a warm session)."""
        self._task = asyncio.create_task(self._read_loop())
        init = await self.request("initialize", {
            "clientID": "fi-dist-hub", "clientName": "fi-dist hub", "adapterID": "debugpy",
            "pathFormat": "path", "linesStartAt1": True, "columnsStartAt1": True,
            "supportsVariableType": True, "supportsRunInTerminalRequest": False,
        })
        self.capabilities = init.get("body") or {}

    async def configure(self, attach_args: dict[str, Any], exception_filters: dict[str, Any],
                        breakpoints: dict[str, dict[str, Any]]) -> None:
        """attach, the root's breakpoints and exception filters, configurationDone."""
        attach = self.request("attach", attach_args)
        ready: asyncio.Future[Any] = asyncio.ensure_future(self._initialized.wait())
        await asyncio.wait([attach, ready], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            # The adapter refused at once (its previous session is still detaching) or
            # said nothing: either way this session cannot be configured.
            resp = attach.result() if attach.done() else {}
            raise ConnectionError(f"{self.label}: attach failed: "
                                  f"{resp.get('message', 'no initialized event in 30 s')}")
        filters = self.request("setExceptionBreakpoints", exception_filters)
        paths = list(breakpoints)
        sets: list[Awaitable[Any]] = [self.request("setBreakpoints", breakpoints[p])
                                      for p in paths]
        done = await asyncio.gather(filters, *sets)
        # Remember what the rank already has: an IDE child session configuring the same
        # breakpoints is answered from here instead of another round trip per rank.
        self.applied_filters = (exception_filters, done[0])
        self.applied = {p: (breakpoints[p], r) for p, r in zip(paths, done[1:], strict=True)}
        await self.request("configurationDone")
        resp = await asyncio.wait_for(attach, 30)
        if not resp.get("success"):
            raise ConnectionError(f"{self.label}: adapter refused attach: {resp.get('message')}")
        self.configured = True

    def forget(self, command: str, args: dict[str, Any]) -> None:
        """Drop the cached answer a new ``command`` with ``args`` makes stale."""
        if command == "setExceptionBreakpoints":
            self.applied_filters = None
        elif command == "setBreakpoints":
            self.applied.pop((args.get("source") or {}).get("path") or "", None)

    def cached(self, command: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """The rank's earlier response when ``args`` would change nothing, else None."""
        if command == "setExceptionBreakpoints" and self.applied_filters is not None:
            old, resp = self.applied_filters
            same = all(old.get(k) == args.get(k) for k in ("filters", "filterOptions",
                                                           "exceptionOptions"))
            return resp if same else None
        if command == "setBreakpoints":
            path = (args.get("source") or {}).get("path") or ""
            entry = self.applied.get(path)
            if entry is not None and entry[0].get("breakpoints") == args.get("breakpoints"):
                return entry[1]
            self.applied.pop(path, None)
        return None

    async def _read_loop(self) -> None:
        try:
            while (msg := await read_message(self.reader)) is not None:
                self._dispatch(msg)
        except (ProtocolError, ConnectionError, OSError) as exc:
            log.warning("%s: debug session stream broken: %s", self.label, exc)
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"{self.label}: debug session closed"))
            self._waiting.clear()
            self.on_event({"type": "event", "event": "fi-dist/closed", "seq": 0})

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if kind == "response":
            rseq = msg["request_seq"]
            if (fut := self._waiting.pop(rseq, None)) is not None:
                if not fut.done():
                    fut.set_result(msg)
            elif (route := self._routes.pop(rseq, None)) is not None:
                sink, orig = route
                sink({**msg, "request_seq": orig})
        elif kind == "event":
            if msg["event"] == "initialized":
                self._initialized.set()
            self.on_event(msg)
        else:  # a reverse request (runInTerminal...): nothing the hub can serve
            self._send({"seq": next(self._seq), "type": "response", "request_seq": msg["seq"],
                        "command": msg["command"], "success": False,
                        "message": "not supported through the fi-dist hub"})

    async def close(self, disconnect: bool = True) -> None:
        """Disconnect (the debuggee resumes, breakpoints go) and close the stream."""
        if disconnect and not self.closed.is_set():
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(self.request("disconnect", {"terminateDebuggee": False}), 5)
        self.writer.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)


@dataclass
class RankLink:
    """One rank as the hub knows it: control connection, state, session, IDE view.

    The hub owns it: IDE sessions read it and change it through the hub's methods.
    """

    rank: int
    node: int
    pid: int
    writer: asyncio.StreamWriter
    machine: Rank = field(default_factory=Rank)
    """Its break-all state; only ``Hub._feed`` replaces it (``breakall.step``)."""
    stopped_event: dict[str, Any] | None = None
    """The adapter's last ``stopped`` event (a child view configured later gets it)."""
    upstream: Upstream | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    child: Any = None
    activity_sent: float = float("-inf")
    """When the hub last told the rank of debugger activity (monotonic)."""
    stack_waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    heard: float = field(default_factory=time.monotonic)
    """When the rank's agent last said anything on its control link (monotonic)."""
    unreachable: bool = False
    """Silent for the hub's UNREACHABLE_AFTER: its node may be partitioned or hung."""
    note: str = "running"
    """Its state line as ``fi-dist status`` and the Ranks view show it."""
    exitcode: int | None = None
    """Its exit code once it said (``exited N``)."""

    @property
    def state(self) -> RankState:
        return self.machine.state

    @property
    def label(self) -> str:
        return f"rank {self.rank} (node {self.node})"

    def command(self, **cmd: Any) -> None:
        """Send a control command to the rank agent (best effort)."""
        if not self.writer.is_closing():
            self.writer.write(line(cmd))

    @property
    def live(self) -> Upstream | None:
        """The rank's session when it is attached and open."""
        up = self.upstream
        return up if up is not None and up.configured and not up.closed.is_set() else None

    @property
    def thread_id(self) -> Any:
        body = (self.stopped_event or {}).get("body") or {}
        return body.get("threadId", "*")
