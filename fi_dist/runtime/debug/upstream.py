"""The hub's side of one rank: its control link and its DAP session with the rank's adapter.

The hub is the only client of every rank's debugpy adapter. IDE child sessions are
views onto that session: their requests are forwarded with fresh sequence numbers
(so hub-originated requests such as the break-all ``pause`` never collide with the
IDE's), and responses are mapped back to the IDE's ``seq``.

Rank states (``RankLink.state``)::

    running --stopped event--> stopped --continue--> running
    running --hub pause-----> pausing --stopped--> stopped
    pausing --no stop in 0.3 s--> blocked (native code / collective; pause stays pending)
    held flag (hold/release events, or its own stop): on its way to or waiting in
    fi_dist.breakpoint(); the hub never pauses it
    any --control link closed--> exited
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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
        self._seq = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._routes: dict[int, tuple[Sink, int]] = {}
        self._initialized = asyncio.Event()
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

    async def start(self, attach_args: dict[str, Any], exception_filters: dict[str, Any],
                    breakpoints: dict[str, dict[str, Any]]) -> None:
        """initialize, attach, configure (the root's breakpoints), configurationDone."""
        self._task = asyncio.create_task(self._read_loop())
        init = await self.request("initialize", {
            "clientID": "fi-dist-hub", "clientName": "fi-dist hub", "adapterID": "debugpy",
            "pathFormat": "path", "linesStartAt1": True, "columnsStartAt1": True,
            "supportsVariableType": True, "supportsRunInTerminalRequest": False,
        })
        self.capabilities = init.get("body") or {}
        attach = self.request("attach", attach_args)
        await asyncio.wait_for(self._initialized.wait(), 30)
        sets: list[Awaitable[Any]] = [self.request("setExceptionBreakpoints", exception_filters)]
        sets += [self.request("setBreakpoints", args) for args in breakpoints.values()]
        await asyncio.gather(*sets)
        await self.request("configurationDone")
        resp = await asyncio.wait_for(attach, 30)
        if not resp.get("success"):
            raise ConnectionError(f"{self.label}: adapter refused attach: {resp.get('message')}")

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
    """One rank as the hub knows it: control connection, state, session, IDE view."""

    rank: int
    node: int
    pid: int
    writer: asyncio.StreamWriter
    state: str = "running"
    stopped_event: dict[str, Any] | None = None
    where: str = ""
    upstream: Upstream | None = None
    connecting: asyncio.Future[Upstream] | None = None
    child: Any = None
    pause_sent: float = 0.0
    blocked: str | None = None
    held: bool = False
    stack_waiters: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"rank {self.rank} (node {self.node})"

    def command(self, **cmd: Any) -> None:
        """Send a control command to the rank agent (best effort)."""
        if not self.writer.is_closing():
            self.writer.write(line(cmd))

    @property
    def thread_id(self) -> Any:
        body = (self.stopped_event or {}).get("body") or {}
        return body.get("threadId", "*")
