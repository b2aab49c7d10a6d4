"""Per-rank liveness signals, written to the rank's file in the run directory.

The contract between what happens on a rank (training steps, debugger activity,
pauses) and who watches it from outside (``fi-dist status``, the idle culler):

* ``step`` / ``step_time``: the last training step and when it ended;
* ``debug_activity``: when a debugger client last did something for this rank;
* ``state``: running, paused at file:line, blocked in collective, exited ...
* ``checkpoint``: a long save or load in progress (bytes, total, MiB/s; see
  :mod:`fi_dist.runtime.checkpoint.progress`).

The rank's own ending (:meth:`Heartbeat.finish`: ``failed`` with its error, or
``exited``) is final: no later state (a debugger's "running" after a continue, which
arrives through another thread) overwrites it, so the launcher's root-cause summary
always reads the rank's own failure record.

Writes are throttled (at most one per ``min_interval`` seconds per field kind) so the
training loop pays a clock read per step, not a file write.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fi_dist import contract
from fi_dist import env_vars as ev
from fi_dist.rundir import RunDir


class Heartbeat:
    """Throttled writer of one rank's liveness fields."""

    def __init__(self, run_dir: RunDir | None, rank: int, min_interval: float = 1.0) -> None:
        self.run_dir = run_dir
        self.rank = rank
        self.min_interval = min_interval
        self._last_write: dict[str, float] = {}
        self._lock = threading.Lock()
        self._final = False
        self._listeners: list[Callable[[str], object]] = []

    def _write(self, kind: str, force: bool, **fields: Any) -> None:
        if self.run_dir is None:
            return
        now = time.monotonic()
        with self._lock:
            if kind == "state" and self._final:
                return  # the rank's own ending stays: never overwritten by a later state
            if not force and now - self._last_write.get(kind, -1e9) < self.min_interval:
                return
            self._last_write[kind] = now
            self.run_dir.write_rank(self.rank, **fields)

    def step(self, step: int) -> None:
        """A training step ended."""
        self._write("step", False, step=step, step_time=time.time())

    def debug_activity(self) -> None:
        """A debugger client did something for this rank (request, pause, step)."""
        self._write("debug", False, debug_activity=time.time())

    def checkpoint(self, progress: dict[str, Any], final: bool = False) -> None:
        """Progress of a long checkpoint save or load (the closing one is always written)."""
        self._write("checkpoint", final, checkpoint=progress)

    def state(self, state: str, *, quiet: bool = False, **extra: Any) -> None:
        """A state change (always written, unless the rank already ended).

        Args:
            quiet: do not tell the listeners (the state came from the debug hub itself).
        """
        if self._final:
            return
        self._write("state", True, state=state, **extra)
        if not quiet:
            self._tell(state)

    def finish(self, state: str, **fields: Any) -> None:
        """The rank ends (``failed`` or ``exited``): written once, never overwritten."""
        with self._lock:
            final, self._final = self._final, True
        if final:
            return
        if self.run_dir is not None:
            with self._lock:
                self.run_dir.write_rank(self.rank, state=state, **fields)
        code = fields.get("exitcode")
        self._tell(f"exited {code}" if code is not None else state)

    def listen(self, callback: Callable[[str], object]) -> None:
        """Call ``callback(state)`` on every state this rank reports (the debug agent)."""
        self._listeners.append(callback)

    def _tell(self, state: str) -> None:
        for callback in list(self._listeners):
            with contextlib.suppress(Exception):  # a listener must never fail the rank
                callback(state)


_current: Heartbeat | None = None


def current() -> Heartbeat:
    """This process's heartbeat, from RANK and the job's run dir (a no-op writer without)."""
    global _current
    if _current is None:
        run = contract.current().run_dir
        rank = int(os.environ.get(ev.RANK, "0") or 0)
        _current = Heartbeat(RunDir(Path(run)) if run else None, rank)
    return _current


def reset_current() -> None:
    """Forget the cached heartbeat (the process's contract changed its run directory)."""
    global _current
    _current = None
