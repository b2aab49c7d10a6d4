"""The debug hub: one IDE port that reaches every rank of the job.

``python -m fi_dist.runtime.debug.hub`` runs beside rank 0 on node 0 (started by node
0's agent, so it is never traced or paused). Two listeners:

* the **IDE port** (``FI_DIST_DEBUG_HOST``:``FI_DIST_DEBUG_PORT``, loopback by default)
  speaks DAP like debugpy's adapter (see :mod:`fi_dist.runtime.debug.ide`);
* the **rank port** (node 0's address : ``FI_DIST_DEBUG_RANK_PORT``) where every rank's
  agent dials out with the job token (see :mod:`fi_dist.runtime.debug.agent`).

Break on all ranks: a ``stopped`` event from any rank makes the hub send ``pause`` to
every running rank; ``continue`` on one rank continues all; steps act on one rank. A
rank that ignores the pause (inside a collective, waiting for a stopped peer) is shown
as blocked with its Python stack; its pause stays pending, so it stops as soon as the
collective returns. What to do for each rank is decided by the pure state machine in
:mod:`fi_dist.runtime.debug.breakall`; this module keeps the sockets and timers, turns
what arrives into its events and carries out the actions it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from fi_dist import contract
from fi_dist import env_vars as ev
from fi_dist import launchjson as vscode
from fi_dist.contract import HUB_READY, DebugSettings
from fi_dist.errors import FiDistError
from fi_dist.runtime.debug import breakall, handshake, launchjson
from fi_dist.runtime.debug.breakall import (
    HALTED,
    After,
    AskStack,
    AskWhere,
    Blocked,
    ChildPause,
    ClientGone,
    Continue,
    Continued,
    Do,
    Event,
    Gone,
    Hold,
    Located,
    Notify,
    Pause,
    PauseFailed,
    PostMortem,
    RankGone,
    RankState,
    Release,
    Resume,
    SessionConfigured,
    ShowBlocked,
    Stopped,
)
from fi_dist.runtime.debug.guard import AUTH_DEADLINE, Pending, Refusals, raise_fd_limit
from fi_dist.runtime.debug.ide import RANK_ATTACH_KEYS, IdeSession
from fi_dist.runtime.debug.jobview import JobView
from fi_dist.runtime.debug.protocol import MAX_LINE, ProtocolError, line, read_line
from fi_dist.runtime.debug.upstream import RankLink, Upstream

log = logging.getLogger("fi_dist.debug.hub")

ACTIVITY_EVERY = 1.0
"""Least seconds between two debugger-activity notes to a rank (each writes a file)."""
ATTACH_TRIES = 5
"""Attach attempts per rank (an adapter still detaching a previous client refuses)."""
PING_EVERY = 1.0
"""Seconds between two pings to every rank's agent (any answer proves it reachable)."""
UNREACHABLE_AFTER = 5.0
"""Seconds of silence after which a rank is reported unreachable to the IDE."""


class Hub:
    """All of the hub's state; runs on one asyncio loop."""

    def __init__(self, token: str, ide_host: str, ide_port: int, rank_host: str,
                 rank_port: int, run_dir: Path | None = None, cwd: Path | None = None) -> None:
        self.token = token
        self.ide_host, self.ide_port = ide_host, ide_port
        self.rank_host, self.rank_port = rank_host, rank_port
        self.run_dir = run_dir
        self.cwd = cwd
        self.ranks: dict[int, RankLink] = {}
        self.root: IdeSession | None = None
        self.breakpoints: dict[str, dict[str, Any]] = {}
        self.exception_filters: dict[str, Any] = {"filters": []}
        self._sids = itertools.count(1)
        self._data: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._detaching: list[asyncio.Task[None]] = []
        self.refusals = Refusals(log)
        self._pending = {"IDE port": Pending(), "rank port": Pending()}
        self.view = JobView(self)

    # --- listeners ----------------------------------------------------------------------
    async def start(self) -> None:
        raise_fd_limit()
        asyncio.get_running_loop().set_exception_handler(self._loop_error)
        ide = await asyncio.start_server(self._on_ide, self.ide_host, self.ide_port)
        ranks = await asyncio.start_server(self._on_rank, self.rank_host, self.rank_port,
                                           limit=MAX_LINE)
        self._servers = [ide, ranks]
        self._watch = asyncio.get_running_loop().create_task(self._watch_ranks())
        self.ide_port = ide.sockets[0].getsockname()[1]
        self.rank_port = ranks.sockets[0].getsockname()[1]
        log.warning("fi-dist debug hub: IDE port %s:%s, rank port %s:%s", self.ide_host,
                    self.ide_port, self.rank_host, self.rank_port)
        launchjson.publish(self.attach_config(), self.cwd, self.run_dir,
                           rank_port=self.rank_port)

    def attach_config(self) -> dict[str, Any]:
        return vscode.attach_config(self.ide_host, self.ide_port, self.token)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # An accept() that fails (EMFILE under a flood) is reported by asyncio on every
        # try: fold those into one line a second instead of a log flood.
        exc = context.get("exception")
        if isinstance(exc, OSError):
            self.refusals.note("listener", f"{context.get('message')}: {exc}")
            return
        loop.default_exception_handler(context)

    def _admit(self, port: str, writer: asyncio.StreamWriter) -> None:
        """A slot among the port's unauthenticated connections (guard.Pending)."""
        if self._pending[port].admit(writer, writer.transport.abort):
            self.refusals.note(port, f"{self._pending[port].limit} connections have not "
                               "authenticated: closed the one that made least progress")

    def progressed(self, port: str, writer: asyncio.StreamWriter) -> None:
        """A not yet authenticated connection sent a complete message."""
        self._pending[port].progress(writer)

    def authenticated(self, port: str, writer: asyncio.StreamWriter) -> None:
        """A connection on ``port`` proved the token (or closed): its pending slot is free."""
        self._pending[port].release(writer)

    def refused(self, port: str, detail: str) -> None:
        self.refusals.note(port, detail)

    async def _on_ide(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._admit("IDE port", writer)
        try:
            await IdeSession(self, reader, writer).serve()
        finally:
            self.authenticated("IDE port", writer)  # closed: the slot is free either way

    async def _on_rank(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._admit("rank port", writer)
        try:
            hello = await self._rank_handshake(reader, writer)
        finally:
            self.authenticated("rank port", writer)
        if hello is None:
            writer.close()
            return
        rank = hello["rank"]
        if hello.get("kind") == "data":
            entry = self._data.pop(hello.get("sid"), None)  # type: ignore[arg-type]
            if entry is None or entry[0] != rank:
                self.refused("rank port", f"unexpected data stream (rank {rank})")
                writer.close()
                return
            if not entry[1].done():
                entry[1].set_result((reader, writer))
            return
        await self._serve_rank(hello, rank, reader, writer)

    async def _rank_handshake(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        """The rank's proof of the token and the hub's proof back (handshake.py)."""
        peer = writer.get_extra_info("peername")
        ask = handshake.challenge()
        try:
            writer.write(line(ask))
            hello = await asyncio.wait_for(read_line(reader), AUTH_DEADLINE)
        except (TimeoutError, ProtocolError, ConnectionError) as exc:
            self.refused("rank port", f"closed {peer}: no valid hello: {exc or 'timeout'}")
            return None
        if not handshake.check_rank(self.token, ask["challenge"], hello):
            self.refused("rank port", f"refused {peer}: no proof of the job token")
            with contextlib.suppress(ConnectionError):
                writer.write(line({"ok": False, "error": "no proof of the job token"}))
            return None
        assert hello is not None
        if not isinstance(hello.get("rank"), int):
            self.refused("rank port", f"refused {peer}: hello without a rank")
            return None
        writer.write(line(handshake.hub_proof(self.token, ask["challenge"], hello)))
        return hello

    async def _serve_rank(self, hello: dict[str, Any], rank: int,
                          reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = RankLink(rank=rank, node=int(hello.get("node", 0)), pid=int(hello.get("pid", 0)),
                        writer=writer)
        old = self.ranks.get(rank)
        if old is not None and old.upstream is not None:
            asyncio.create_task(old.upstream.close(disconnect=False))
        self.ranks[rank] = link
        log.info("%s connected (pid %s)", link.label, link.pid)
        self.view.changed()
        self._prewarm(link)
        if self.root is not None and self.root.configured:
            asyncio.create_task(self._open_for_root(link))
        try:
            while (msg := await read_line(reader)) is not None:
                link.heard = time.monotonic()
                if link.unreachable:
                    link.unreachable = False
                    self._tell_ide(link, f"fi-dist: {link.label} is reachable again")
                self._rank_message(link, msg)
        except (ProtocolError, ConnectionError) as exc:
            # A rank that said it exited resets the link when it ends with a ping of ours
            # unread: the normal end of every job, not a fault worth a warning.
            ended = isinstance(exc, ConnectionResetError) and link.note.startswith("exited")
            (log.info if ended else log.warning)("%s: control stream broken: %s",
                                                 link.label, exc)
        finally:
            writer.close()
            if self.ranks.get(rank) is link:
                self._rank_gone(link)

    def _rank_message(self, link: RankLink, msg: dict[str, Any]) -> None:
        event = msg.get("event")
        if event == "stack":
            for fut in link.stack_waiters:
                if not fut.done():
                    fut.set_result(msg)
            link.stack_waiters.clear()
        elif event == "pause-failed":
            self._feed(link, PauseFailed(live=link.live is not None))
        elif event == "hold":
            self._feed(link, Hold(time.monotonic()))
        elif event == "release":
            self._feed(link, Release())
        elif event == "post-mortem":
            # Peers that fail next fail of this (closed gloo/NCCL connections): their
            # agents hear it first, so those errors do not stop in the debugger too.
            text = f"post-mortem: {msg.get('error_type') or 'exception'}"
            for other in self.ranks.values():
                if other is not link:
                    other.command(cmd="peer-failed", rank=link.rank, error=msg.get("error"))
            self._feed(link, PostMortem(text))
        elif event == "state":
            # A state the rank wrote itself (waiting in fi_dist.breakpoint, post-mortem
            # without a client, exited N): the Ranks view shows it too.
            self._note(link, str(msg.get("state") or ""))

    def _rank_gone(self, link: RankLink) -> None:
        self._feed(link, RankGone())

    async def _watch_ranks(self) -> None:
        """Ping every rank; one silent for UNREACHABLE_AFTER (a partitioned node) is reported.

        Its connection is kept (TCP delivers what waits once the network heals); the IDE
        is told, and the other ranks stay inspectable meanwhile.
        """
        while True:
            await asyncio.sleep(PING_EVERY)
            now = time.monotonic()
            for link in list(self.ranks.values()):
                if link.state is RankState.EXITED:
                    continue
                try:
                    link.command(cmd="ping")
                    if not link.unreachable and now - link.heard > UNREACHABLE_AFTER:
                        link.unreachable = True
                        self._tell_ide(link, f"fi-dist: {link.label} is unreachable: no "
                                       f"answer for {now - link.heard:.0f}s (a network "
                                       "partition or a hung node); the other ranks stay "
                                       "inspectable")
                except Exception as exc:  # one broken link must not stop the watch
                    log.info("%s: ping failed: %s", link.label, exc)

    def _tell_ide(self, link: RankLink, text: str) -> None:
        """A line for the log and the IDE (the root session and the rank's own view)."""
        log.warning("%s", text)
        for session in (link.child, self.root):
            if session is not None:
                session.event("output", {"category": "important", "output": text + "\n"})

    # --- rank debug sessions -------------------------------------------------------------
    def _attach_args(self, args: dict[str, Any] | None) -> dict[str, Any]:
        src = args if args is not None else (
            (self.root.attach_req or {}).get("arguments", {}) if self.root else {})
        out = {k: v for k, v in src.items() if k in RANK_ATTACH_KEYS}
        out.setdefault("justMyCode", False)
        out["subProcess"] = False
        return out

    async def ensure_upstream(self, link: RankLink, args: dict[str, Any] | None = None
                              ) -> Upstream:
        """The rank's configured debug session, opened through its agent when needed.

        All session changes of one rank (warm-up, attach, close) hold ``link.lock``, so a
        rank never has two sessions with its adapter at once (the adapter serves one).
        """
        async with link.lock:
            for attempt in range(ATTACH_TRIES):
                up = link.upstream
                if up is None or up.closed.is_set():
                    up = link.upstream = await self._connect(link)
                if up.configured:
                    return up
                try:
                    await up.configure(self._attach_args(args), self.exception_filters,
                                       self.breakpoints)
                    # A pause owed meanwhile (configurationDone let the rank run before
                    # its attach answered) goes out now.
                    self._feed(link, SessionConfigured())
                    return up
                except ConnectionError as exc:
                    # A half-attached session cannot be attached again: start over.
                    link.upstream = None
                    await up.close(disconnect=False)
                    if attempt == ATTACH_TRIES - 1:
                        raise
                    log.info("%s: %s; retrying", link.label, exc)
                    await asyncio.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")

    async def _connect(self, link: RankLink) -> Upstream:
        """A relay to the rank's adapter, initialized (not attached yet)."""
        sid = next(self._sids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._data[sid] = (link.rank, fut)
        link.command(cmd="open", sid=sid)
        try:
            reader, writer = await asyncio.wait_for(fut, 15)
        finally:
            self._data.pop(sid, None)
        up = Upstream(link.label, reader, writer, lambda m: self._rank_event(link, m))
        await up.open()
        return up

    def _prewarm(self, link: RankLink) -> None:
        # Open the relay and initialize before any IDE attaches: an attach then only
        # pays for attach + configuration (P3).
        async def warm() -> None:
            async with link.lock:
                if link.state is RankState.EXITED or (link.upstream is not None
                                              and not link.upstream.closed.is_set()):
                    return
                try:
                    link.upstream = await self._connect(link)
                except (ConnectionError, TimeoutError, OSError) as exc:
                    log.info("%s: warm-up failed: %s", link.label, exc)

        asyncio.create_task(warm())

    async def _reset(self, link: RankLink) -> None:
        """Close the rank's session (it resumes, breakpoints go) and warm a new one."""
        async with link.lock:
            up, link.upstream = link.upstream, None
            if up is not None:
                await up.close(disconnect=up.configured)
        self._prewarm(link)

    async def _open_for_root(self, link: RankLink) -> None:
        try:
            await self.ensure_upstream(link)
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.warning("%s: cannot open its debug session: %s", link.label, exc)
            return

        if self.root is not None and self.root.configured and link.state is not RankState.EXITED:
            self.root.announce(link)

    async def root_configured(self, root: IdeSession) -> None:
        # Rank order: VSCode lists child sessions in the order they are started.
        for link in sorted(self.ranks.values(), key=lambda link: link.rank):
            if link.state is not RankState.EXITED:
                root.announce(link)
                asyncio.create_task(self._open_for_root_quiet(link))

    async def _open_for_root_quiet(self, link: RankLink) -> None:
        try:
            await self.ensure_upstream(link)
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.warning("%s: cannot open its debug session: %s", link.label, exc)

    def broadcast(self, command: str, args: dict[str, Any]) -> None:
        for link in self.ranks.values():
            if (up := link.live) is not None:
                up.forget(command, args)  # children must ask the rank again
                up.fire(command, args)

    # --- what IDE sessions change (they call these, never write the hub's fields) ---------
    def set_root(self, session: IdeSession) -> bool:
        """Make ``session`` the job's root session; False when another client has one."""
        if self.root is not None:
            return False
        self.root = session
        return True

    def attach_child(self, link: RankLink, session: IdeSession) -> None:
        """Make ``session`` rank ``link``'s child view, closing an older one."""
        if link.child is not None and link.child is not session:
            link.child.close()
        link.child = session

    def set_breakpoints(self, args: dict[str, Any]) -> None:
        """The root's ``setBreakpoints`` for one file: every rank, now and when it attaches."""
        self.breakpoints[(args.get("source") or {}).get("path") or ""] = args
        self.broadcast("setBreakpoints", args)

    def set_exception_filters(self, args: dict[str, Any]) -> None:
        """The root's ``setExceptionBreakpoints``: every rank, now and when it attaches."""
        self.exception_filters = args
        self.broadcast("setExceptionBreakpoints", args)

    def child_pause(self, link: RankLink) -> None:
        """A child view forwards its own ``pause``: the stop it brings is not a late one."""
        self._feed(link, ChildPause())

    def end_session(self, why: str) -> None:
        """End the IDE's whole debug session (root and every view); every rank resumes.

        What a Disconnect on any rank's session means: VSCode forwards it to the parent
        only for children it started with ``lifecycleManagedByParent``, which a DAP
        ``startDebugging`` cannot ask for, so the hub does it.
        """
        root = self.root
        if root is None:
            return
        log.warning("IDE: %s: ending the debug session, every rank resumes", why)
        for link in self.ranks.values():
            if link.child is not None:
                link.child.end()
        root.end()  # its connection closes: ide_closed() resumes the ranks

    async def ide_closed(self, session: IdeSession) -> None:
        if session.link is not None and session.link.child is session:
            session.link.child = None
        if session is not self.root:
            return
        # The client left: resume every rank (debugpy's disconnect resumes and clears
        # breakpoints) and close the children's views.
        self.root = None
        self.breakpoints.clear()
        self.exception_filters = {"filters": []}
        log.warning("IDE client detached: resuming every rank")
        now = time.monotonic()
        for link in self.ranks.values():
            if link.child is not None:
                link.child.end()
                link.child = None
            self._feed(link, ClientGone(now))
        self.view.set_focus(None)
        closing, self._detaching = self._detaching, []
        await asyncio.gather(*closing, return_exceptions=True)

    def activity(self, link: RankLink) -> None:
        """Tell every rank (each node's idle culler) a human is at the debugger of
        ``link``'s rank; at most 1/s per rank. Every rank, because a node's culler sees
        only its own ranks (a pod's run directory) and a human on rank 0 keeps the whole
        job: the other ranks wait for it."""
        now = time.monotonic()
        for other in self.ranks.values():
            if now - other.activity_sent >= ACTIVITY_EVERY:
                other.activity_sent = now
                other.command(cmd="activity")

    # --- break all / continue all: events in, actions out ------------------------------
    def _rank_event(self, link: RankLink, msg: dict[str, Any]) -> None:
        name = msg["event"]
        if name in ("fi-dist/closed", "process", "initialized"):
            # The hub speaks to the IDE for the rank: it announces the process and says
            # when a child session is initialized itself.
            return
        if name == "stopped":
            reason = (msg.get("body") or {}).get("reason")
            self._feed(link, Stopped(str(reason or ""), time.monotonic()), stop=msg)
            return  # shown (or not) by the machine's SHOW_STOP
        if name == "continued":
            self._feed(link, Continued())
        self._to_child(link, msg)

    def _to_child(self, link: RankLink, msg: dict[str, Any]) -> None:
        if link.child is not None and link.child.configured:
            link.child.send(msg)

    def pause_all(self, origin: RankLink | None) -> None:
        """Pause every running rank except ``origin`` (a no-op for stopped or held ones)."""
        states = {r: link.machine for r, link in self.ranks.items()}
        for r in breakall.pause_targets(states, origin.rank if origin is not None else None):
            link = self.ranks[r]
            self._feed(link, Pause(live=link.live is not None))

    def continue_all(self, origin: RankLink | None) -> None:
        """Continue every halted rank and cancel pending pauses (except ``origin``)."""
        states = {r: link.machine for r, link in self.ranks.items()}
        targets = set(breakall.continue_targets(states,
                                                origin.rank if origin is not None else None))
        now = time.monotonic()
        for r, link in list(self.ranks.items()):
            self._feed(link, Continue(now) if r in targets else Resume())

    def _feed(self, link: RankLink, event: Event, stop: dict[str, Any] | None = None) -> None:
        """Step ``link``'s break-all machine with ``event`` and carry out its actions.

        ``stop`` is the adapter's ``stopped`` message that :class:`Stopped` came from.
        """
        before = link.machine
        link.machine, actions = breakall.step(before, event)
        if link.machine != before:
            self.view.changed()
        for action in actions:
            self._do(link, action, stop)

    def _do(self, link: RankLink, action: breakall.Action, stop: dict[str, Any] | None
            ) -> None:
        match action:
            case Do.PAUSE:  # through the agent, in-process: one hop less than the adapter
                link.command(cmd="pause")
            case Do.DAP_PAUSE:
                if (up := link.live) is not None:
                    up.fire("pause", {"threadId": "*"})
            case Do.DAP_CONTINUE:
                if (up := link.live) is not None:
                    up.fire("continue", {"threadId": link.thread_id})
            case Do.UNPAUSE:
                link.command(cmd="unpause")
            case Do.RESUMED:
                link.command(cmd="resumed")
            case Do.SHOW_STOP:
                if stop is not None:
                    body = stop.get("body") or {}
                    if body.get("reason") == "pause" and link.rank != self.view.origin:
                        # Paused by the break-all: the IDE keeps showing the rank that
                        # stopped first instead of jumping to each paused one.
                        stop = {**stop, "body": {**body, "preserveFocusHint": True}}
                    link.stopped_event = stop
                    self._to_child(link, stop)
                self.view.changed()
            case Do.DROP_STOP:
                log.info("%s: a cancelled pause landed late; the rank resumes", link.label)
            case Do.PAUSE_OTHERS:
                self.view.break_all_from(link.rank)
                self.pause_all(link)
            case Do.DETACH:
                self._detaching.append(asyncio.create_task(self._reset(link)))
            case Notify(text=text):
                link.command(cmd="state", state=text)
                self._note(link, text)
            case After(delay=delay, event=event):
                asyncio.get_running_loop().call_later(delay, self._feed, link, event)
            case AskStack(epoch=epoch):
                asyncio.create_task(self._ask_stack(link, epoch))
            case AskWhere(epoch=epoch):
                asyncio.create_task(self._ask_where(link, epoch))
            case ShowBlocked(summary=summary, stack=stack):
                note = (f"fi-dist: {link.label} is {summary}; it stops as soon as the call "
                        f"returns to Python. Python stack (innermost last):\n{stack}")
                log.warning("%s", note.rstrip())
                for session in (link.child, self.root):
                    if session is not None:
                        session.event("output", {"category": "console", "output": note})
                self.view.blocked(link.rank, summary)
            case Gone(was=was):
                log.log(logging.WARNING if was in HALTED else logging.INFO,
                        "%s exited (was %s)", link.label, was)
                if link.upstream is not None:
                    asyncio.create_task(link.upstream.close(disconnect=False))
                if link.child is not None:
                    link.child.finish(link.exitcode or 0)
                if not link.note.startswith(("exited", "failed")):
                    self._note(link, "exited" if link.exitcode is None
                               else f"exited {link.exitcode}")
                self.view.changed()
                if self.root is not None:
                    self.root.event("output", {
                        "category": "console",
                        "output": f"fi-dist: {link.label} exited (was {was})\n"})

    def _note(self, link: RankLink, text: str) -> None:
        """Rank ``link``'s state line changed (Ranks view; the rank's file is written by
        the rank itself, through its agent)."""
        if text and text != link.note:
            link.note = text
            if text.startswith("exited "):
                with contextlib.suppress(ValueError):
                    link.exitcode = int(text.split()[1])
            self.view.changed()

    async def _ask_stack(self, link: RankLink, epoch: int) -> None:
        """The agent's main-thread stack, for a rank that did not stop for its pause."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        link.stack_waiters.append(fut)
        link.command(cmd="stack")
        try:
            stack = await asyncio.wait_for(fut, 5)
        except TimeoutError:
            return
        frames = stack.get("frames") or []
        text = "".join(f"    {f.get('file')}:{f.get('line')} in {f.get('name')}\n"
                       for f in frames[-8:])
        self._feed(link, Blocked(epoch, str(stack.get("summary") or "in native code"), text))

    async def _ask_where(self, link: RankLink, epoch: int) -> None:
        """Where a stopped rank stopped (its top frame), for ``fi-dist status``."""
        up = link.upstream
        if up is None:
            return
        try:
            resp = await asyncio.wait_for(up.request("stackTrace", {
                "threadId": link.thread_id, "startFrame": 0, "levels": 1}), 5)
        except (TimeoutError, ConnectionError):
            return
        frames = (resp.get("body") or {}).get("stackFrames") or []
        if frames:
            src = (frames[0].get("source") or {}).get("path", "?")
            self._feed(link, Located(epoch, f"{os.path.basename(src)}:{frames[0].get('line')}"))

    async def serve_forever(self) -> None:
        await asyncio.gather(*(s.serve_forever() for s in self._servers))


def _parent_watch(parent: int) -> None:
    # The hub lives as long as node 0's agent; PDEATHSIG is not portable, polling is.
    async def watch() -> None:
        while True:
            await asyncio.sleep(0.5)
            if os.getppid() != parent:
                log.warning("fi-dist debug hub: node agent gone, exiting")
                os._exit(0)

    asyncio.create_task(watch())


async def _amain(debug: DebugSettings, rank_host: str, run_dir: str | None) -> None:
    hub = Hub(token=debug.token, ide_host=debug.ide_host, ide_port=debug.ide_port,
              rank_host=rank_host, rank_port=debug.hub_rank_port,
              run_dir=Path(run_dir) if run_dir else None, cwd=Path.cwd())
    await hub.start()
    print(f"{HUB_READY} {hub.ide_port} {hub.rank_port}", flush=True)
    _parent_watch(os.getppid())
    await hub.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """``python -m fi_dist.runtime.debug.hub --rank-host ADDR``; settings from the contract."""
    p = argparse.ArgumentParser(prog="fi_dist.runtime.debug.hub", description=__doc__)
    p.add_argument("--rank-host", default="127.0.0.1",
                   help="address of the rank port (node 0's address)")
    args = p.parse_args(argv)
    try:
        job = contract.current()
    except FiDistError as exc:
        print(f"fi-dist debug hub: {exc}", file=sys.stderr)
        return 2
    if job.debug is None:
        print(f"fi-dist debug hub: {ev.FI_DIST_DEBUG}=1 and {ev.FI_DIST_DEBUG_TOKEN} are not "
              "set: nothing to serve", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="[debug hub] %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_amain(job.debug, args.rank_host, job.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
