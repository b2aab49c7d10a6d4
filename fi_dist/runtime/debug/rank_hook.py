"""What ``rank_main`` does for the debugger: setup before the script, post-mortem after.

Kept apart from ``rank_main`` so a job without ``--debug`` never imports debugpy.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from fi_dist.contract import DebugSettings
from fi_dist.runtime import heartbeat
from fi_dist.runtime.debug import agent, timeouts
from fi_dist.runtime.environment import RankEnvironment

log = logging.getLogger("fi_dist.debug")

COMM_ERROR_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError")
COMM_ERROR_HINTS = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                    "ProcessGroupGloo", "ProcessGroupNCCL", "NCCL error", "gloo/transport",
                    "c10d")
"""How a rank's error reads when a peer went away under a collective (gloo, NCCL)."""
PEER_NOTICE_WAIT = 1.0
"""Seconds a rank with such an error waits for the hub's word that a peer failed first."""


def is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a collective that lost its peers (not the user's bug)."""
    text = f"{type(exc).__name__}: {exc}"
    return type(exc).__name__ in COMM_ERROR_TYPES or any(h in text for h in COMM_ERROR_HINTS)


def setup(env: RankEnvironment, debug: DebugSettings) -> None:
    """debugpy on loopback, the hub agent, long timeouts; wait for a client if asked."""
    # Python 3.11's frozen stdlib makes pydevd print a 4-line warning per rank.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    timeouts.apply(debug.pg_timeout)
    agent.start(env, debug)
    if debug.wait_for_client:
        agent.wait_for_client()


def post_mortem(exc: BaseException, debug: DebugSettings) -> bool:
    """Stop this rank at the raising frame (the hub then pauses the others).

    Waits up to ``debug.post_mortem_wait`` seconds for a client when none is attached;
    without one the caller fails the job as usual (the error file names the root cause).
    An error that follows another rank's failure (the hub said so; for a collective
    that lost its peers, it may say so within PEER_NOTICE_WAIT) is a consequence: it
    does not stop, so one Continue on the first failure ends the job.

    Returns:
        Whether the rank stopped in the debugger.
    """
    import debugpy

    wait = debug.post_mortem_wait
    rank_agent = agent.current()
    label = rank_agent.env.label() if rank_agent else "this rank"
    if rank_agent is not None:
        if is_comm_error(exc):
            rank_agent.peer_failed.wait(PEER_NOTICE_WAIT)
        if rank_agent.peer_failed.is_set():
            first = rank_agent.peer_failure
            print(f"fi-dist: {label} raised {type(exc).__name__}: {exc} after rank "
                  f"{first.get('rank')} failed ({first.get('error')}): a consequence, not "
                  "stopping in the debugger", file=sys.stderr, flush=True)
            return False
        rank_agent.send({"event": "post-mortem", "error": f"{type(exc).__name__}: {exc}",
                         "error_type": type(exc).__name__})
    if not debugpy.is_client_connected() and wait > 0:
        print(f"fi-dist: {label} raised {type(exc).__name__}: {exc}; waiting {wait:g}s for a "
              "debugger client (post-mortem)", file=sys.stderr, flush=True)
        heartbeat.current().state(f"post-mortem: {type(exc).__name__}, waiting for a client")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not debugpy.is_client_connected():
            time.sleep(0.1)
    if not debugpy.is_client_connected():
        return False
    heartbeat.current().state(f"post-mortem: {type(exc).__name__}")
    agent.ensure_tracing()  # stepping and evaluating from the raising frame need it
    # pydevd treats the exception as uncaught and stops at the frame that raised it.
    debugpy.trigger_exception_handler(exc, as_uncaught=True)
    return True


def exiting(code: int) -> None:
    """The script is over: rank_main's own ``SystemExit(code)`` must not stop the rank.

    pydevd takes an unhandled non-zero ``SystemExit`` for an uncaught exception (VSCode's
    default filter): after a post-mortem's Continue, or after a script's own
    ``sys.exit(3)``, the rank would stop once more at rank_main's exit.
    """
    try:
        import pydevd
    except ImportError:
        return
    py_db = pydevd.get_global_debugger()
    if py_db is None:
        return
    if hasattr(py_db, "set_break_on_system_exit"):
        py_db.set_break_on_system_exit(set(), [])  # no code breaks (a str code still does)
    else:
        py_db.set_ignore_system_exit_codes({*py_db._ignore_system_exit_codes, code})
