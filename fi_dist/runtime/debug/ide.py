"""One IDE connection to the hub's port: the root session or one rank's child session.

The hub answers ``initialize`` itself (debugpy's capabilities), then the ``attach``
arguments decide the role:

* no ``fiDistRank``: the **root** session. Its breakpoints and exception filters apply
  to every rank; after ``configurationDone`` the hub opens one child per rank with the
  ``startDebugging`` reverse request (or the ``debugpyAttach`` event for clients that
  do not advertise ``supportsStartDebuggingRequest``), each config pointing back at
  this same port with ``fiDistRank`` set, in rank order. Its one thread is the job
  (:mod:`~fi_dist.runtime.debug.jobview`): stopped while some rank is. Closing the root
  resumes every rank.
* ``fiDistRank: R``: a **child** session, a view onto rank R's debug session: requests
  are forwarded, ``continue`` continues every rank, thread names carry ``rank R (node N)``.
  A ``disconnect``/``terminate`` on it ends the whole debug session (every rank resumes).
  With ``fiDistSideView: true`` it is a *side* view (``fi-dist eval`` beside the IDE): it
  does not replace the IDE's child view of the rank, gets no events, and its disconnect
  ends only itself; its attach response lists every rank the hub knows (``fiDistRanks``).

Any session may send the fi-dist extension's ``fiDist/ranks`` (the Ranks view's rows) and
``fiDist/focus`` (the rank the IDE shows) requests.

Every attach must carry the job's token (``fiDistToken``), compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
from typing import TYPE_CHECKING, Any

from fi_dist.runtime.debug.breakall import RankState, forwards_continue
from fi_dist.runtime.debug.guard import AUTH_DEADLINE, PREAUTH_MESSAGE
from fi_dist.runtime.debug.protocol import ProtocolError, encode, read_message

if TYPE_CHECKING:
    from fi_dist.runtime.debug.hub import Hub
    from fi_dist.runtime.debug.upstream import RankLink

log = logging.getLogger("fi_dist.debug.hub")

CAPABILITIES: dict[str, Any] = {
    "supportsCompletionsRequest": True, "supportsConditionalBreakpoints": True,
    "supportsConfigurationDoneRequest": True, "supportsDebuggerProperties": True,
    "supportsDelayedStackTraceLoading": True, "supportsEvaluateForHovers": True,
    "supportsExceptionInfoRequest": True, "supportsExceptionOptions": True,
    "supportsFunctionBreakpoints": True, "supportsHitConditionalBreakpoints": True,
    "supportsLogPoints": True, "supportsModulesRequest": True, "supportsSetExpression": True,
    "supportsSetVariable": True, "supportsValueFormattingOptions": True,
    "supportsTerminateDebuggee": True, "supportsTerminateRequest": True,
    "supportsGotoTargetsRequest": True, "supportsClipboardContext": True,
    "supportsStepInTargetsRequest": True,
    "exceptionBreakpointFilters": [
        {"filter": "raised", "label": "Raised Exceptions", "default": False},
        {"filter": "uncaught", "label": "Uncaught Exceptions", "default": True},
        {"filter": "userUnhandled", "label": "User Uncaught Exceptions", "default": False},
    ],
}
"""What debugpy's adapter answers to ``initialize`` (the IDE sees the same adapter)."""

CONFIG_COMMANDS = ("setBreakpoints", "setExceptionBreakpoints", "setFunctionBreakpoints")
FI_DIST_COMMANDS = ("fiDist/ranks", "fiDist/focus")
"""The fi-dist extension's requests: the Ranks view's rows; the rank the IDE shows."""
DEBUG_TYPES = ("fi-dist", "debugpy")
"""Debug types whose adapter may be the hub (the fi-dist extension's, debugpy's)."""
RANK_ATTACH_KEYS = frozenset({
    "justMyCode", "debugStdLib", "redirectOutput", "showReturnValue", "breakOnSystemExitZero",
    "django", "flask", "jinja", "rules", "pathMappings", "variablePresentation",
    "stopAllThreadsOnSuspend", "steppingResumesAllThreads", "resolveSymlinks", "clientOS",
})
"""Attach arguments passed on to a rank's debugger: how to debug, never where or what to
run (``listen``, ``connect``, ``processId``, raw ``debugOptions``/``options`` stay here)."""


class IdeSession:
    """One IDE-side DAP connection."""

    def __init__(self, hub: Hub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                 ) -> None:
        self.hub = hub
        self.reader = reader
        self.writer = writer
        self.peer = writer.get_extra_info("peername")
        self.init_args: dict[str, Any] = {}
        self.attach_req: dict[str, Any] | None = None
        self.role: str | None = None
        self.link: RankLink | None = None
        self.configured = False
        self.side = False
        """A side view of a rank (fi-dist eval): no events, the IDE's child view stays."""
        self.ended = False
        """The hub ended this session (``terminated`` sent): its disconnect ends nothing."""
        self._seq = itertools.count(1)

    # --- output ---------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode({**msg, "seq": next(self._seq)}))

    def respond(self, req: dict[str, Any], body: dict[str, Any] | None = None,
                error: str | None = None) -> None:
        msg: dict[str, Any] = {"type": "response", "request_seq": req.get("seq", 0),
                               "command": req.get("command"), "success": error is None}
        if error is not None:
            msg["message"] = error
            msg["body"] = {"error": {"id": 1, "format": error}}
        elif body is not None:
            msg["body"] = body
        self.send(msg)

    def event(self, name: str, body: dict[str, Any] | None = None) -> None:
        msg: dict[str, Any] = {"type": "event", "event": name}
        if body is not None:
            msg["body"] = body
        self.send(msg)

    def close(self) -> None:
        self.writer.close()

    def end(self) -> None:
        """Tell the IDE this session is over (``terminated``) and close it."""
        if not self.ended:
            self.ended = True
            self.event("terminated")
        self.close()

    def finish(self, exit_code: int) -> None:
        """The rank behind this view exited: ``exited`` then ``terminated``."""
        if not self.ended:
            self.event("exited", {"exitCode": exit_code})
        self.end()

    # --- input ----------------------------------------------------------------------
    async def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next message; until the client has attached, small and within the deadline."""
        if self.role is not None:
            return await read_message(self.reader)
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError
        msg = await asyncio.wait_for(read_message(self.reader, PREAUTH_MESSAGE), left)
        self.hub.progressed("IDE port", self.writer)
        return msg

    async def serve(self) -> None:
        deadline = asyncio.get_running_loop().time() + AUTH_DEADLINE
        try:
            while (msg := await self._next(deadline)) is not None:
                if msg["type"] == "request":
                    await self._request(msg)
                # Responses to our reverse requests and client events need nothing.
        except ProtocolError as exc:
            if self.role is None:
                self.hub.refused("IDE port", f"closed {self.peer}: bad message: {exc}")
            else:
                log.warning("IDE connection %s: closing, bad message: %s", self.peer, exc)
        except TimeoutError:
            self.hub.refused("IDE port", f"closed {self.peer}: no attach within "
                             f"{AUTH_DEADLINE:g}s")
        except (ConnectionError, OSError) as exc:
            log.info("IDE connection %s lost: %s", self.peer, exc)
        finally:
            self.writer.close()
            await self.hub.ide_closed(self)

    async def _request(self, req: dict[str, Any]) -> None:
        cmd = req["command"]
        args = req.get("arguments") or {}
        if cmd == "initialize":
            self.init_args = args
            self.respond(req, CAPABILITIES)
        elif cmd in ("attach", "launch"):
            await self._attach(req, args)
        elif self.role is None:
            self.respond(req, error=f"{cmd!r} before an authenticated attach")
        elif self.role == "root":
            await self._root_request(req, cmd, args)
        else:
            await self._child_request(req, cmd, args)

    async def _attach(self, req: dict[str, Any], args: dict[str, Any]) -> None:
        if self.role is not None:
            self.respond(req, error="this session is already attached")
            return
        token = args.get("fiDistToken")
        if req["command"] != "attach" or not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), self.hub.token.encode()):
            self.hub.refused("IDE port", f"attach refused from {self.peer}: missing or wrong "
                             "fiDistToken")
            self.respond(req, error="fi-dist hub: attach refused: the arguments lack this job's "
                         "fiDistToken (use the 'fi-dist: attach all ranks' configuration from "
                         ".vscode/launch.json or `fi-dist attach --print`)")
            await self.writer.drain()
            self.close()
            return
        rank = args.get("fiDistRank")
        if rank is None:
            if not self.hub.set_root(self):
                self.respond(req, error="another client is already attached to this job")
                return
            self.role = "root"
        else:
            link = self.hub.ranks.get(rank) if isinstance(rank, int) else None
            if link is None or link.state is RankState.EXITED:
                self.respond(req, error=f"rank {rank!r} is not connected to the hub")
                return
            try:
                await self.hub.ensure_upstream(link, args)
            except (TimeoutError, ConnectionError, OSError) as exc:
                self.respond(req, error=f"{link.label}: cannot open its debug session: {exc}")
                return
            self.side = bool(args.get("fiDistSideView"))
            if not self.side:
                self.hub.attach_child(link, self)
            self.role, self.link = "child", link
        self.attach_req = req
        self.hub.authenticated("IDE port", self.writer)
        self.event("initialized")

    # --- root -------------------------------------------------------------------------
    async def _root_request(self, req: dict[str, Any], cmd: str, args: dict[str, Any]) -> None:
        hub = self.hub
        if cmd == "setBreakpoints":
            hub.set_breakpoints(args)
            self.respond(req, {"breakpoints": [{"verified": True, "line": b.get("line")}
                                               for b in args.get("breakpoints") or []]})
        elif cmd == "setExceptionBreakpoints":
            hub.set_exception_filters(args)
            self.respond(req, {})
        elif cmd == "setFunctionBreakpoints":
            hub.broadcast(cmd, args)
            self.respond(req, {"breakpoints": [{"verified": True}
                                               for _ in args.get("breakpoints") or []]})
        elif cmd == "configurationDone":
            self.respond(req)
            if self.attach_req is not None:
                self.respond(self.attach_req)
                self.configured = True
                await hub.root_configured(self)
        elif cmd == "threads":
            self.respond(req, {"threads": hub.view.root_threads()})
        elif cmd == "stackTrace":  # the job's thread has no frames: the ranks have them
            self.respond(req, {"stackFrames": [], "totalFrames": 0})
        elif cmd in FI_DIST_COMMANDS:
            self._fi_dist_request(req, cmd, args)
        elif cmd == "pause":
            hub.pause_all(None)
            self.respond(req)
        elif cmd == "continue":
            hub.continue_all(None)
            self.respond(req, {"allThreadsContinued": True})
        elif cmd in ("disconnect", "terminate"):
            self.respond(req)
            await self.writer.drain()
            self.close()
        else:
            self.respond(req, error=f"{cmd!r} needs a rank: use the 'rank R (node N)' sessions")

    def _fi_dist_request(self, req: dict[str, Any], cmd: str, args: dict[str, Any]) -> None:
        """The fi-dist extension's own requests (any session may send them)."""
        if cmd == "fiDist/focus":
            rank = args.get("rank")
            self.hub.view.set_focus(rank if isinstance(rank, int) else None)
        self.respond(req, self.hub.view.body())

    def child_config(self, link: RankLink) -> dict[str, Any]:
        """The attach config of rank ``link``'s child session (points back at this port).

        Of the root's own debug type: ``fi-dist`` (the fi-dist extension, no other
        needed) or ``debugpy`` (Microsoft's Python Debugger); VSCode gives children of
        ``startDebugging`` the parent's type anyway, the ``debugpyAttach`` route reads it.
        """
        base = {k: v for k, v in (self.attach_req or {}).get("arguments", {}).items()
                if k not in ("__sessionId",)}
        kind = base.get("type")
        base.update({"type": kind if kind in DEBUG_TYPES else "debugpy", "request": "attach",
                     "name": link.label,
                     "connect": {"host": self.hub.ide_host, "port": self.hub.ide_port},
                     "fiDistToken": self.hub.token, "fiDistRank": link.rank})
        return base

    def announce(self, link: RankLink) -> None:
        """Ask the IDE to open rank ``link``'s child session."""
        config = self.child_config(link)
        if self.init_args.get("supportsStartDebuggingRequest"):
            self.send({"type": "request", "command": "startDebugging",
                       "arguments": {"request": "attach", "configuration": config}})
        else:
            self.event("debugpyAttach", config)

    # --- child ------------------------------------------------------------------------
    async def _child_request(self, req: dict[str, Any], cmd: str, args: dict[str, Any]) -> None:
        link = self.link
        assert link is not None
        up = link.live
        self.hub.activity(link)
        if cmd == "configurationDone":
            self.respond(req)
            if self.attach_req is not None:
                ranks = {str(r): {"node": k.node, "state": k.state.value}
                         for r, k in sorted(self.hub.ranks.items())}
                self.respond(self.attach_req, {"fiDistRanks": ranks} if self.side else None)
                self.configured = True
                self.event("process", {"name": link.label, "systemProcessId": link.pid,
                                       "isLocalProcess": False, "startMethod": "attach"})
                if link.state is RankState.STOPPED and link.stopped_event is not None:
                    self.send(link.stopped_event)
            return
        if cmd in ("disconnect", "terminate"):
            self.respond(req)
            await self.writer.drain()
            if (not self.ended and not self.side and link.state is not RankState.EXITED
                    and not args.get("restart")):
                # Disconnect/Stop with a rank's session selected: the user means the job's
                # debug session, not one view of it (every rank resumes, every view ends).
                # A restart of the view (it attaches again at once) ends only the view, and
                # a side view (fi-dist eval) only itself.
                self.hub.end_session(f"{link.label}'s session sent {cmd}")
            self.close()
            return
        if cmd in FI_DIST_COMMANDS:
            self._fi_dist_request(req, cmd, args)
            return
        if up is None:
            self.respond(req, error=f"{link.label} has no live debug session ({link.state})")
            return
        if cmd == "continue" and not forwards_continue(link.machine):
            # pydevd answers a continue only once a thread resumes: sent to a rank that
            # never stopped it would stall that rank's adapter. Continue the job instead.
            self.respond(req, {"allThreadsContinued": True})
            self.hub.continue_all(None)
            return
        cached = up.cached(cmd, args) if cmd in CONFIG_COMMANDS else None
        if cached is not None:
            self.respond(req, cached.get("body") or {})
            return
        if cmd == "pause":
            self.hub.child_pause(link)  # the stop it brings is this pause, not a late one
        sink = self._threads_sink if cmd == "threads" else self.send
        try:
            up.forward(req, sink)
        except ConnectionError as exc:
            self.respond(req, error=str(exc))
            return
        if cmd == "continue":
            self.hub.continue_all(link)

    def _threads_sink(self, msg: dict[str, Any]) -> None:
        label = self.link.label if self.link else "?"
        for t in (msg.get("body") or {}).get("threads") or []:
            if isinstance(t, dict) and not str(t.get("name", "")).startswith("rank "):
                t["name"] = f"{label}: {t.get('name', '')}"
        self.send(msg)
