"""The supervisor's hang watch: capture every rank's stack when a job stops progressing.

Polled by :class:`~fi_dist.supervisor.Supervisor` (local and Ray launchers) from its
loop. It reads the ranks' ledgers (and step heartbeats) from the run directory, never
the ranks themselves, so watching costs the ranks nothing. Two triggers:

* **no progress** (``--hang-timeout S``): no rank initialised a process group,
  completed a collective (Python's or, through the Flight Recorder, C++'s) or a step
  for S seconds, counted from the first ledger seen. The watch collects every rank's
  stack, records the report in the run directory (``hang-<attempt>.txt`` and the
  event the summary reads) and tells the supervisor to end the job, which then exits
  :data:`HANG_EXIT_CODE` (not retried: a hang usually is a bug);
* **a collective raised** (a collective timeout, a peer gone): the stacks of the ranks
  still alive are captured at once (always on, also without ``--hang-timeout``). The
  summary shows it as the root cause when the collective's error came first, i.e.
  the timeout of a hang rather than the consequence of another rank's crash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fi_dist.hang.collect import collect
from fi_dist.hang.ledger import LedgerSnapshot, read_ledgers
from fi_dist.hang.report import Report
from fi_dist.rundir import RunDir

log = logging.getLogger("fi_dist.hang")

HANG_EXIT_CODE = 124
"""Exit code of a job ended by ``--hang-timeout`` (like timeout(1); 1..127: not retried)."""
POLL_EVERY = 0.5


class HangWatch:
    """Watches one run directory; :meth:`poll` says when the job must be ended."""

    def __init__(self, run_dir: RunDir, timeout: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 poll_every: float = POLL_EVERY) -> None:
        self.run_dir = run_dir
        self.timeout = timeout
        self.clock = clock
        self.poll_every = poll_every
        self.attempt = 0
        self._last_poll = -1e9
        self._key: Any = None
        self._since: float | None = None
        self._failure_seen = False
        self.report: Report | None = None
        """The last capture (no progress, or a collective that raised)."""

    @property
    def directory(self) -> Path:
        return self.run_dir.path / "hang"

    def reset(self, attempt: int) -> None:
        """A new attempt: the clock starts again at its first ledger."""
        self.attempt = attempt
        self._key = None
        self._since = None
        self._failure_seen = False

    def _progress_key(self, ledgers: dict[int, LedgerSnapshot]) -> tuple[Any, ...] | None:
        if not ledgers:
            return None
        steps = tuple(sorted((r, d.get("step")) for r, d in self.run_dir.ranks().items()))
        return (tuple(sorted((r, v.pid, v.progress_key()) for r, v in ledgers.items())),
                steps)

    def poll(self) -> str | None:
        """Check progress (at most every ``poll_every`` s); a message when the job hangs."""
        now = self.clock()
        if now - self._last_poll < self.poll_every:
            return None
        self._last_poll = now
        ledgers = read_ledgers(self.directory)
        if not self._failure_seen and (failed := _failed_collective(ledgers)) is not None:
            self._failure_seen = True
            self.capture(f"rank {failed[0]} failed in {failed[1]}", failed[2], end=False)
        if not self.timeout:
            return None
        key = self._progress_key(ledgers)
        if key is None:
            return None
        if key != self._key or self._since is None:
            self._key, self._since = key, now
            return None
        if now - self._since < self.timeout:
            return None
        stalled = now - self._since
        self._since = now  # once per window, should the job not end
        report = self.capture(f"no progress for {stalled:.0f}s (no collective completed and "
                              "no step on any rank)", time.time(), end=True)
        return (f"fi-dist: the job made no progress for {stalled:.0f}s (--hang-timeout "
                f"{self.timeout:g}); every rank's stack is in "
                f"{self.run_dir.path / f'hang-{self.attempt}.txt'}; ending the job\n"
                f"fi-dist: diagnosis: {report.diagnosis.text}")

    def capture(self, trigger: str, when: float, end: bool) -> Report:
        """Collect every rank's stack now and record it in the run directory."""
        report = collect(self.directory, self.run_dir.run_id)
        self.report = report
        text = report.text()
        try:
            (self.run_dir.path / f"hang-{self.attempt}.txt").write_text(
                f"{trigger}\n{text}\n")
            self.run_dir.record_hang({
                "trigger": trigger, "time": when, "ends_job": end,
                "exitcode": HANG_EXIT_CODE if end else 1,
                "diagnosis": report.diagnosis.to_json(), "text": text,
                "attempt": self.attempt})
        except OSError as exc:  # a full disk must not stop the supervisor
            log.warning("fi-dist: cannot record the hang report: %s", exc)
        return report


def _failed_collective(ledgers: dict[int, LedgerSnapshot]) -> tuple[int, str, float] | None:
    """The first collective that raised on any rank: (rank, what, when)."""
    first: tuple[int, str, float] | None = None
    for r, v in ledgers.items():
        for s in v.slots:
            if s.failed and (first is None or s.failed_at < first[2]):
                first = (r, f"{s.op} #{s.issued} ({s.error})", s.failed_at)
    return first
