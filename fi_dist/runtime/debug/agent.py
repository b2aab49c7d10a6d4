"""The rank side of the debug hub: pydevd in the rank plus a small agent that dials out.

Each rank (``rank_main`` with ``FI_DIST_DEBUG=1``) calls :func:`start`:

1. pydevd (debugpy's debugger) starts connected to the agent and to nothing else
   (:mod:`~fi_dist.runtime.debug.pydevd_link`): no port of the rank accepts a session;
2. an agent thread connects OUT to the hub's rank port (``MASTER_ADDR``: the contract's
   hub rank port); hub and rank prove the job token to each other without sending it
   (:mod:`~fi_dist.runtime.debug.handshake`) and the rank announces rank/node/pid;
3. on the hub's ``open`` command the agent opens a second (also proven) connection to
   the hub and serves it with this rank's pydevd: the hub speaks DAP through it; on
   ``stack`` it reports the main thread's Python stack (how the hub shows a rank blocked
   in a collective); on ``state`` it writes the rank's state to the run dir; on
   ``peer-failed`` it remembers that another rank failed first (this rank's errors from
   then on are consequences: post-mortem does not stop on them). States the rank writes
   itself (waiting in ``fi_dist.breakpoint``, post-mortem, exited N) go to the hub too.

The agent's threads are marked as pydevd's own, so "pause all threads" and
"suspend all on breakpoint" never stop the relay the debugger itself runs through.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import threading
import time
import traceback
import warnings
from typing import Any

from fi_dist.contract import DebugSettings
from fi_dist.runtime import heartbeat
from fi_dist.runtime.debug import handshake
from fi_dist.runtime.debug.protocol import ProtocolError, SyncChannel
from fi_dist.runtime.debug.pydevd_link import PydevdLink, debugger_thread
from fi_dist.runtime.environment import RankEnvironment

log = logging.getLogger("fi_dist.debug.agent")

COLLECTIVE_HINTS = ("torch/distributed/", "torch\\distributed\\")
REDIAL_LIMIT = 120.0
"""Seconds without reaching the job's hub after which the agent stops trying."""
"""A main-thread frame in these files while the rank ignores a pause: a collective."""


def main_stack(limit: int = 40) -> list[dict[str, Any]]:
    """The main thread's Python stack, innermost last (what it runs while not stopping)."""
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    if frame is None:
        return []
    return [{"file": f.filename, "line": f.lineno, "name": f.name}
            for f in traceback.extract_stack(frame, limit=limit)]


def describe_stack(frames: list[dict[str, Any]]) -> str:
    """``blocked in collective all_reduce at train.py:42`` or ``running at f.py:3``."""
    if not frames:
        return "running"
    collective = next((f for f in reversed(frames)
                       if any(h in f["file"] for h in COLLECTIVE_HINTS)), None)
    user = next((f for f in reversed(frames) if not any(h in f["file"] for h in COLLECTIVE_HINTS)
                 and "fi_dist/runtime" not in f["file"]), frames[-1])
    where = f"{os.path.basename(user['file'])}:{user['line']}"
    if collective is not None:
        return f"blocked in collective {collective['name']} at {where}"
    return f"blocked in native code at {where}"


class RankAgent:
    """One rank's connection to the hub; relays DAP streams to the local adapter."""

    def __init__(self, env: RankEnvironment, hub: tuple[str, int], token: str,
                 link: PydevdLink) -> None:
        self.env = env
        self.hub = hub
        self.token = token
        self.link = link
        self.connected = threading.Event()
        self.gave_up = threading.Event()
        self._send_lock = threading.Lock()
        self._chan: SyncChannel | None = None
        self._stop = False
        self._on_resume: list[Any] = []
        self.peer_failed = threading.Event()
        """Another rank failed (post-mortem) before this one: set by the hub."""
        self.peer_failure: dict[str, Any] = {}

    # --- control connection -------------------------------------------------------
    def _dial(self, kind: str, **extra: Any) -> tuple[socket.socket, SyncChannel]:
        """A connection to the hub on which both sides proved the job token (handshake.py).

        Raises:
            OSError: the hub cannot be reached.
            ProtocolError: the other side is not the job's hub, or refused this rank.
        """
        sock = socket.create_connection(self.hub, timeout=10)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            chan = SyncChannel(sock)
            ask = chan.read_line()
            if not isinstance(ask, dict) or not isinstance(ask.get("challenge"), str):
                raise ProtocolError(f"{self.hub[0]}:{self.hub[1]} sent no challenge: not a hub")
            hello = handshake.rank_hello(self.token, ask["challenge"], kind=kind,
                                         rank=self.env.rank, node=self.env.node_rank,
                                         pid=os.getpid(), world_size=self.env.world_size,
                                         **extra)
            chan.send_line(hello)
            reply = chan.read_line()
            if not handshake.check_hub(self.token, ask["challenge"], hello, reply):
                raise ProtocolError(f"{self.hub[0]}:{self.hub[1]} did not prove the job token "
                                    f"({(reply or {}).get('error', 'no proof')}): not this "
                                    "job's hub")
            sock.settimeout(None)
            return sock, chan
        except BaseException:
            sock.close()
            raise

    def run(self) -> None:
        """Connect (retrying while the hub starts) and serve commands until stopped.

        Gives up, with one line saying so, once the hub has been unreachable (or not
        the job's hub) for :data:`REDIAL_LIMIT` seconds.
        """
        delay = 0.05
        since = time.monotonic()
        last_error = ""
        while not self._stop:
            try:
                sock, chan = self._dial("control")
            except (OSError, ProtocolError) as exc:
                last_error = str(exc)
                if time.monotonic() - since > REDIAL_LIMIT:
                    log.warning("%s: gave up reaching the debug hub at %s:%s after %gs: %s",
                                self.env.label(), *self.hub, REDIAL_LIMIT, last_error)
                    self.gave_up.set()
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            try:
                self._serve(chan)
            except (OSError, ProtocolError) as exc:
                log.warning("%s: hub connection lost: %s", self.env.label(), exc)
            finally:
                self.connected.clear()
                self._chan = None
                sock.close()
                since = time.monotonic()
            time.sleep(0.2)

    def _serve(self, chan: SyncChannel) -> None:
        self._chan = chan
        self.connected.set()
        while (cmd := chan.read_line()) is not None:
            try:
                self._command(cmd)
            except Exception as exc:  # one bad command must not cut the rank off the hub
                log.warning("%s: hub command %r failed: %s", self.env.label(), cmd.get("cmd"),
                            exc)
                if cmd.get("cmd") == "pause":
                    self.send({"event": "pause-failed"})

    def _command(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        if name == "open":
            debugger_thread(self._relay, cmd.get("sid"), name="fi-dist-relay")
        elif name == "stack":
            frames = main_stack()
            self.send({"event": "stack", "frames": frames, "summary": describe_stack(frames)})
        elif name == "state":
            extra = {k: v for k, v in cmd.items() if k not in ("cmd", "state")}
            heartbeat.current().state(str(cmd.get("state")), quiet=True, **extra)
        elif name == "ping":  # the hub checks that this rank is still reachable
            self.send({"event": "pong"})
        elif name == "peer-failed":
            if not self.peer_failed.is_set():
                self.peer_failure = {"rank": cmd.get("rank"), "error": cmd.get("error")}
                self.peer_failed.set()
        elif name == "activity":
            heartbeat.current().debug_activity()
        elif name == "pause":
            _pause_all_threads()  # pydevd's suspend, hooked to switch tracing on first
        elif name == "unpause":
            _unpause_all_threads()
        elif name == "resumed":
            with self._send_lock:
                callbacks, self._on_resume = self._on_resume, []
            for callback in callbacks:
                try:
                    callback()
                except Exception as exc:  # a store gone with the job: nothing to release
                    log.warning("%s: resume callback failed: %s", self.env.label(), exc)
        else:
            log.warning("%s: unknown hub command %r", self.env.label(), name)

    def on_resume(self, callback: Any) -> None:
        """Run ``callback`` when the client continues this rank (not on a step)."""
        with self._send_lock:
            self._on_resume.append(callback)

    def send(self, obj: dict[str, Any]) -> bool:
        """Send an event line to the hub; False when not connected."""
        chan = self._chan
        if chan is None:
            return False
        try:
            with self._send_lock:
                chan.send_line(obj)
            return True
        except OSError:
            return False

    # --- data relays ------------------------------------------------------------------
    def _relay(self, sid: Any) -> None:
        """One debug session of the hub's: a data connection served by this rank's pydevd."""
        try:
            up, chan = self._dial("data", sid=sid)
        except (OSError, ProtocolError) as exc:
            log.warning("%s: cannot open debug session %s: %s", self.env.label(), sid, exc)
            return
        # The hub may send its first request right behind its proof: hand it on.
        self.link.serve(up, pending=chan.take_buffer())


_tracing = threading.Event()
_tracing_lock = threading.Lock()


def ensure_tracing() -> None:
    """Turn pydevd's tracing on for every user thread (once), from any thread.

    In lazy mode ranks run untraced (on Python 3.11 ``sys.settrace`` slows every Python
    call) until something needs it: a breakpoint, a function breakpoint or an exception
    filter arrives (pydevd's ``on_breakpoints_changed``), a pause is requested, or
    ``fi_dist.breakpoint()`` / post-mortem stops a rank. Frames already running get a
    frame tracer too, so a breakpoint in the loop the rank is in is hit. A no-op in eager
    mode.
    """
    if _tracing.is_set():
        return
    with _tracing_lock:
        if _tracing.is_set():
            return
        import pydevd
        import pydevd_tracing
        from _pydev_bundle import pydev_monkey

        py_db = pydevd.get_global_debugger()
        if py_db is None:
            return
        me = threading.get_ident()
        others = [t.ident for t in threading.enumerate()
                  if t.ident not in (None, me) and not _isdebugger_thread(t)]
        if not _isdebugger_thread(threading.current_thread()):
            py_db.enable_tracing()
        if others:
            # pydevd's own "attach to a running process" path: set each thread state's
            # trace function through its native helper (the threads may be in C code).
            pydevd_tracing.set_trace_to_threads(py_db.trace_dispatch, thread_idents=others,
                                                create_dummy_thread=False)
        # Threads started from now on are traced as under eager mode.
        pydev_monkey.enable_trace_thread_modules()
        threading.settrace(py_db.trace_dispatch)
        # The frames already on every stack (the training loop itself) get line events.
        py_db.set_tracing_for_untraced_contexts()
        _tracing.set()
        log.debug("pydevd tracing on (lazy mode)")


def _isdebugger_thread(t: threading.Thread) -> bool:
    return bool(getattr(t, "is_pydev_daemon_thread", False)
                or getattr(t, "pydev_do_not_trace", False))


def _wants_tracing(py_db: Any) -> bool:
    """Whether pydevd's configuration can only be honoured while tracing."""
    return bool(py_db.breakpoints or py_db.function_breakpoint_name_to_breakpoint
                or py_db.break_on_caught_exceptions or py_db.break_on_user_uncaught_exceptions
                or py_db.has_plugin_line_breaks or py_db.has_plugin_exception_breaks)


def _start_lazy() -> bool:
    """Untrace this rank and hook pydevd so tracing starts the moment it is needed.

    The hooks run in this process, in pydevd's own reader thread, before pydevd answers
    the request: a breakpoint set while the rank runs (or before ``--wait-for-client``
    releases it) is live before the rank can pass it. False when this pydevd lacks
    what the hooks rely on (the rank then stays in eager mode).
    """
    try:
        import debugpy
        import pydevd
        from _pydev_bundle import pydev_monkey
        from _pydevd_bundle import pydevd_constants
        from _pydevd_bundle.pydevd_api import PyDevdAPI
    except ImportError:
        return False
    py_db = pydevd.get_global_debugger()
    needed = ("on_breakpoints_changed", "breakpoints", "function_breakpoint_name_to_breakpoint",
              "break_on_caught_exceptions", "break_on_user_uncaught_exceptions",
              "has_plugin_line_breaks", "has_plugin_exception_breaks")
    if (py_db is None or getattr(pydevd_constants, "PYDEVD_USE_SYS_MONITORING", False)
            or not all(hasattr(py_db, n) for n in needed)
            or not hasattr(PyDevdAPI, "request_suspend_thread")
            or not hasattr(pydev_monkey, "disable_trace_thread_modules")):
        # Python 3.12+: pydevd uses sys.monitoring, which costs little untriggered.
        return False
    changed = py_db.on_breakpoints_changed

    def on_breakpoints_changed(removed: bool = False) -> None:
        if not removed and _wants_tracing(py_db):
            ensure_tracing()
        changed(removed=removed)

    py_db.on_breakpoints_changed = on_breakpoints_changed
    suspend = PyDevdAPI.request_suspend_thread

    def request_suspend_thread(self: Any, db: Any, thread_id: str = "*") -> Any:
        ensure_tracing()  # a pause only lands on a traced thread
        return suspend(self, db, thread_id)

    PyDevdAPI.request_suspend_thread = request_suspend_thread
    pydev_monkey.disable_trace_thread_modules()
    threading.settrace(None)
    debugpy.trace_this_thread(False)
    return True


def _pause_all_threads() -> None:
    """What pydevd does for a DAP ``pause`` with threadId "*", without the adapter hop."""
    import pydevd
    from _pydevd_bundle.pydevd_api import PyDevdAPI

    py_db = pydevd.get_global_debugger()
    if py_db is None:
        raise RuntimeError("pydevd is not running in this rank")
    PyDevdAPI().request_suspend_thread(py_db, "*")
    # A suspend that did not mark the main thread would be lost without a word: say so,
    # and the hub pauses through the adapter instead.
    from _pydevd_bundle.pydevd_additional_thread_info import set_additional_thread_info
    from _pydevd_bundle.pydevd_constants import STATE_SUSPEND

    main = threading.main_thread()
    if main.is_alive() and set_additional_thread_info(main).pydev_state != STATE_SUSPEND:
        raise RuntimeError("the main thread was not marked suspended")


def _unpause_all_threads() -> None:
    """Cancel a pause that has not landed (or resume one that just did), in-process."""
    import pydevd
    from _pydevd_bundle.pydevd_api import PyDevdAPI

    if pydevd.get_global_debugger() is not None:
        PyDevdAPI().request_resume_thread("*")


QUIET_COMMANDS = ("internal_get_completions", "internal_evaluate_expression_json",
                  "internal_get_variable_json")
"""pydevd's handlers of completions, evaluate and variables, run with warnings off."""


def _quiet_introspection() -> bool:
    """Run the debugger's completions/evaluate/variables with Python warnings off.

    Completing ``dist.`` walks every attribute of ``torch.distributed``, and many of
    them warn (deprecations): each warning went to the Debug Console as stderr. The
    handlers run on the stopped thread while the rank waits, so the filter is on only
    while they run. False when this pydevd lacks them (nothing changed).
    """
    try:
        from _pydevd_bundle import pydevd_api
    except ImportError:
        return False
    if not all(callable(getattr(pydevd_api, n, None)) for n in QUIET_COMMANDS):
        return False
    for name in QUIET_COMMANDS:
        handler = getattr(pydevd_api, name)
        if getattr(handler, "__fi_dist_quiet__", False):
            continue

        @functools.wraps(handler)
        def quiet(*args: Any, __handler: Any = handler, **kwargs: Any) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return __handler(*args, **kwargs)

        quiet.__fi_dist_quiet__ = True  # type: ignore[attr-defined]
        setattr(pydevd_api, name, quiet)
    return True


_agent: RankAgent | None = None


def current() -> RankAgent | None:
    """This rank's agent when the job runs under the debug hub."""
    return _agent


def start(env: RankEnvironment, debug: DebugSettings, hub_host: str | None = None
          ) -> RankAgent:
    """Start debugpy on loopback and the agent thread (idempotent).

    Args:
        env: this rank's place in the job.
        debug: the job's debug settings (token, hub rank port, trace mode).
        hub_host: where the hub's rank port is; node 0's address (MASTER_ADDR) by default.
    """
    global _agent
    if _agent is not None:
        return _agent
    import debugpy

    # Ranks are separate torchrun workers; following their subprocesses (dataloader
    # workers) would need one adapter session each and is not what users attach for.
    debugpy.configure(subProcess=False)
    link = PydevdLink()
    link.start()  # pydevd, reachable by this agent only (pydevd_link.py)
    _quiet_introspection()
    if debug.trace == "eager" or not _start_lazy():
        _tracing.set()
    hub = (hub_host or env.master_addr, debug.hub_rank_port)
    _agent = RankAgent(env, hub, debug.token, link)
    rank_agent = _agent
    heartbeat.current().listen(lambda state: rank_agent.send({"event": "state",
                                                              "state": state}))
    debugger_thread(_agent.run, name="fi-dist-debug-agent")
    return _agent


def wait_for_client() -> None:
    """Block before the script's first line until the hub's client session is configured."""
    import debugpy

    heartbeat.current().state("waiting for debugger client")
    debugpy.wait_for_client()
    heartbeat.current().state("running")
