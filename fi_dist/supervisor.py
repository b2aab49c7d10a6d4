"""The supervisor: run a job's attempts to the end, the same way for every launcher.

One loop (torch.distributed.elastic's ``_invoke_run`` is the model) serves the local
launcher (units are node agents) and the Ray launcher (units are rank actors); a
:class:`Backend` only starts, watches and stops its units. The rules live here once:

* a unit that fails gives its peers :data:`PEER_EXIT_WINDOW` seconds to fail on their
  own (their exit codes are then their own), then every unit gets SIGTERM and, after
  the grace period, SIGKILL;
* a failed attempt is retried up to ``max_restarts`` times when its exit code is
  retryable (>= 128: a signal, a preemption), like ``restartPolicy: ExitCode``; a bug
  (1-127) is final;
* a unit the backend reports lost (:meth:`Backend.lost_units`: its node stopped answering)
  fails at once with :data:`~fi_dist.summary.NODE_LOST_EXIT` and the attempt is stopped
  without the peers' window (they hang in collectives with it);
* SIGINT/SIGTERM to the supervisor stops every unit the same way;
* the summary names the first failure as the root cause.
"""

from __future__ import annotations

import abc
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from fi_dist.console import PlainView
from fi_dist.hang.watch import HangWatch
from fi_dist.launcher import JobState
from fi_dist.rundir import RunDir
from fi_dist.spec import JobSpec
from fi_dist.summary import NODE_LOST_EXIT, Summary, format_summary

PEER_EXIT_WINDOW = 3.0
"""Seconds a failed unit's peers get to fail on their own before they are stopped."""
STOP_DEADLINE = 15.0
"""Seconds past the grace period after which units that never reported are given up."""


def retryable(exitcode: int) -> bool:
    """``restartPolicy: ExitCode``: 128-255 (signals, preemption) retry, 1-127 (bugs) not."""
    return exitcode >= 128


class Backend(abc.ABC):
    """How one launcher starts, watches and stops the units of an attempt."""

    @abc.abstractmethod
    def start(self, attempt: int) -> list[int]:
        """Start every unit of attempt ``attempt``; returns the units' ids."""

    @abc.abstractmethod
    def poll(self, timeout: float) -> tuple[list[tuple[int, str]], dict[int, int]]:
        """New output lines as (node, text) and the exit codes of units that ended.

        Waits at most ``timeout`` seconds for something to happen.
        """

    @abc.abstractmethod
    def terminate(self, grace: float) -> None:
        """SIGTERM every unit, SIGKILL what is left after ``grace``; must not block."""

    @abc.abstractmethod
    def summarize(self, exits: dict[int, int | None]) -> Summary:
        """The attempt's outcome from the units' exit codes (None: never reported)."""

    def lost_units(self) -> dict[int, str]:
        """Units whose node stopped answering (liveness), each with why; default none.

        Called once per poll. A lost unit counts as failed with :data:`NODE_LOST_EXIT`
        (retryable, like an evicted pod) and the attempt is stopped at once: its peers
        are stuck in collectives with it, so there is no point waiting for their exits.
        """
        return {}

    def node_of(self, unit: int) -> int:
        """The node a unit runs on (units are nodes unless a backend says otherwise)."""
        return unit

    def open(self) -> None:  # noqa: B027 - optional hook
        """Before the first attempt (connect to a cluster, ...)."""

    def end_attempt(self) -> None:  # noqa: B027 - optional hook
        """After each attempt, whatever its outcome."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """After the last attempt: nothing of the job may be left running."""


class Supervisor:
    """Runs attempts of one job until success, a final failure or a stop signal."""

    def __init__(self, spec: JobSpec, backend: Backend, view: PlainView, run_dir: RunDir,
                 run_info: dict[str, Any] | None = None,
                 peer_window: float = PEER_EXIT_WINDOW) -> None:
        self.spec = spec
        self.peer_window = peer_window
        self.backend = backend
        self.view = view
        self.run_dir = run_dir
        self.run_info = run_info or {}
        self.attempts = 0
        self.summary: Summary | None = None
        self.exitcode = 1
        self._stop_signal: int | None = None
        # Reads the ranks' collective ledgers: --hang-timeout, and stacks when one raises.
        self.hang = HangWatch(run_dir, spec.hang_timeout) if spec.hang_doctor else None

    @property
    def run_id(self) -> str:
        return self.run_dir.run_id

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def run(self) -> int:
        """Supervise to the end; returns the job's exit code."""
        self.run_dir.write_run({
            "run_id": self.run_id, "pid": os.getpid(), "launcher": self.spec.launcher,
            "state": "running", "job_state": JobState.RUNNING.value,
            "spec": self.spec.to_dict(), "cwd": str(Path.cwd()), **self.run_info,
        })
        self.view.start(self.spec.nnodes, self.spec.nproc_per_node)
        old: dict[int, Any] = {}
        try:
            self.backend.open()
            # After open(): Ray puts its own crash handler on SIGTERM when it starts.
            old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            self._loop()
        finally:
            try:
                self.backend.close()
            finally:
                self.view.stop()
                for s, h in old.items():
                    signal.signal(s, h)
        return self._finish()

    def _loop(self) -> None:
        while True:
            try:
                self.summary = self._attempt()
            finally:
                self.backend.end_attempt()
            if self.summary.ok or self._stop_signal is not None:
                return
            if self.attempts >= self.spec.max_restarts or not retryable(self.summary.exitcode):
                return
            self.attempts += 1
            self.view.message(f"fi-dist: restarting the job (attempt {self.attempts} of "
                              f"{self.spec.max_restarts}) after exit {self.summary.exitcode}")
            self.run_dir.clear_attempt_state()

    def _finish(self) -> int:
        summary = self.summary
        if summary is None:  # stopped before the first attempt ended
            self.exitcode = 128 + (self._stop_signal or signal.SIGTERM)
            self.run_dir.update_run(state="finished", exitcode=self.exitcode,
                                    job_state=JobState.CANCELLED.value)
            return self.exitcode
        self.exitcode = summary.exitcode
        if self._stop_signal is not None and self.exitcode == 0:
            self.exitcode = 128 + self._stop_signal
        self.view.message(format_summary(summary))
        state = JobState.SUCCEEDED if self.exitcode == 0 else JobState.FAILED
        if self._stop_signal is not None and self.exitcode != 0:
            state = JobState.CANCELLED
        self.run_dir.update_run(state="finished", exitcode=self.exitcode, job_state=state.value)
        return self.exitcode

    def _attempt(self) -> Summary:
        units = self.backend.start(self.attempts)
        self.run_dir.update_run(attempt=self.attempts)
        if self.hang is not None:
            self.hang.reset(self.attempts)
        hung = False
        exits: dict[int, int | None] = {u: None for u in units}
        first_failure: float | None = None
        stopped_at: float | None = None
        while any(c is None for c in exits.values()):
            lines, ended = self.backend.poll(0.05)
            for node, text in lines:
                self.view.line(node, text)
            for unit, code in ended.items():
                if exits.get(unit) is not None:
                    continue
                exits[unit] = code
                self.view.node_state(self.backend.node_of(unit), f"exited {code}")
                if code != 0 and first_failure is None:
                    first_failure = time.monotonic()
            lost = {u: why for u, why in self.backend.lost_units().items()
                    if exits.get(u) is None}
            for unit, why in lost.items():
                exits[unit] = NODE_LOST_EXIT
                self.view.message(f"fi-dist: {why}")
                self.view.node_state(self.backend.node_of(unit), "lost")
                first_failure = first_failure or time.monotonic()
            # Peers of a failed unit usually fail on their own within a moment (closed
            # sockets); give them that so their exit codes are their own, then end them.
            overdue = bool(lost) or (first_failure is not None
                                     and time.monotonic() - first_failure > self.peer_window)
            if self.hang is not None and stopped_at is None and (note := self.hang.poll()):
                self.view.message(note)
                hung = True
            if (overdue or hung or self._stop_signal is not None) and stopped_at is None:
                stopped_at = time.monotonic()
                threading.Thread(target=self.backend.terminate, args=(self.spec.grace_period,),
                                 daemon=True).start()
            if (stopped_at is not None
                    and time.monotonic() - stopped_at > self.spec.grace_period + STOP_DEADLINE):
                break  # units that never reported (a lost cluster): the summary says so
        lines, _ = self.backend.poll(0.05)
        for node, text in lines:
            self.view.line(node, text)
        return self.backend.summarize(exits)
