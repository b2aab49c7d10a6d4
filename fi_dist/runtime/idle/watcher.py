"""The per-node culler: a background thread of whatever hosts it.

Three hosts run the same watcher: the node agent (``fi-dist run``), the Flyte decorator
in a task's pod (:mod:`fi_dist.runtime.idle.task`, no node agent there) and a process
of its own per Ray node (``python -m fi_dist.runtime.idle``). A host only says how its
node ends (``kill``, ``after_end``).

Every ``interval`` it reads this node's ranks from the run directory (pids, step
heartbeat, debugger activity, state), samples utilisation, folds both into the pure
:func:`~fi_dist.runtime.idle.policy.decide` and acts on the verdict:

* WARN / RESUME / hung: notify;
* STOP: notify, then request a checkpoint the way a preemption does (SIGTERM to the
  node's ranks: the Checkpointer agrees on a step, saves and exits 143) and SIGKILL
  what is left after the grace period. The node agent then exits with
  :data:`~fi_dist.runtime.idle.config.IDLE_EXIT_CODE`. In dry-run mode STOP only
  notifies, and the window starts again.

Each sample also lands in ``nodes/<k>.idle.json`` for ``fi-dist status`` and the hub.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fi_dist.rundir import RunDir, pid_alive, write_json
from fi_dist.runtime.idle.config import IDLE_EXIT_CODE
from fi_dist.runtime.idle.notify import IdleEvent, Notifier, notify_all
from fi_dist.runtime.idle.policy import (
    QUIET_STATES,
    Action,
    Observation,
    Phase,
    Policy,
    Verdict,
    WatchState,
    decide,
)
from fi_dist.runtime.idle.sampler import DeviceSample, Sampler
from fi_dist.spec import IdleSpec

log = logging.getLogger("fi_dist.idle")

_DONE_STATES = ("exited", "failed")


class IdleWatcher:
    """Samples one node, decides, escalates. Start with :meth:`start`."""

    def __init__(self, spec: IdleSpec, run_dir: RunDir, node: int, sampler: Sampler,
                 notifiers: list[Notifier], grace: float = 30.0,
                 clock: Callable[[], float] = time.time,
                 kill: Callable[[int, int], None] = os.kill,
                 after_end: Callable[[], None] | None = None,
                 job_activity: Callable[[], float | None] | None = None) -> None:
        """
        Args:
            kill: how a rank is signalled (the decorator's host raises in its own main
                thread rather than signalling its whole process).
            after_end: called once the node's ranks were ended (the host ends itself).
            job_activity: when a human last did something anywhere in the job, from a
                source beyond this node's run directory (another pod's code-server).
        """
        self.spec = spec
        self.interval = spec.sample_interval
        self.policy = Policy(spec.timeout, spec.threshold, spec.warn_lead, spec.hang_factor,
                             self.interval)
        self.run_dir = run_dir
        self.node = node
        self.sampler = sampler
        self.notifiers = notifiers
        self.grace = grace
        self.clock = clock
        self.kill = kill
        self.after_end = after_end
        self.job_activity = job_activity
        self.state = WatchState()
        self.verdict: Verdict | None = None
        self.ended_at: float | None = None
        """When the culler decided to end this node (None: it did not)."""
        self.events: list[IdleEvent] = []
        self._hung: tuple[int, ...] = ()
        self._failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if note := self.spec.interval_note():
            log.warning("fi-dist %s", note)
        self._thread = threading.Thread(target=self._loop, name="fi-dist-idle", daemon=True)
        # Never paused by a debugger's "pause all" (pydevd skips its own daemon threads).
        self._thread.pydev_do_not_trace = True  # type: ignore[attr-defined]
        self._thread.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
        self._thread.start()

    @property
    def ended(self) -> bool:
        """The culler decided to end this node (not in dry-run mode)."""
        return self.ended_at is not None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self.sampler.close()

    def finish(self, result: dict[str, Any], code: int) -> int:
        """Stop watching; if the culler ended the node, rewrite its result and exit code.

        The ranks' own failures (SIGTERM, 143 from a checkpoint) are consequences of
        the culling, so they move aside: the node itself is the root cause, at the
        moment the culler decided, and the code is final (not retried).
        """
        self.stop()
        if self.ended_at is None:
            return code
        result["idle_ended_ranks"] = result.pop("failures", {})
        result["failures"] = {}
        reason = self.verdict.reason if self.verdict else "idle"
        result["error"] = f"ended by the idle culler: {reason}"
        result["ended"] = self.ended_at
        result["exitcode"] = IDLE_EXIT_CODE
        return IDLE_EXIT_CODE

    def _loop(self) -> None:
        while True:
            try:
                if self.tick() is Action.STOP and not self.spec.dry_run:
                    self._end_node()
                    if self.after_end is not None and not self._stop.is_set():
                        self.after_end()
                    return
            except Exception as exc:  # a failed poll must not end the watch
                self._failures += 1
                if self._failures == 1:  # the traceback once, then one line per failure
                    log.exception("fi-dist idle: node %d: sample failed", self.node)
                else:
                    log.warning("fi-dist idle: node %d: sample failed (%d times): %s: %s",
                                self.node, self._failures, type(exc).__name__, exc)
            if self._stop.wait(self.interval):
                return

    # --- one sample ------------------------------------------------------------------
    def observe(self) -> tuple[Observation, list[DeviceSample], dict[int, int]]:
        ranks = self.run_dir.ranks()
        mine = {r: d for r, d in ranks.items()
                if d.get("node") == self.node and d.get("state") not in _DONE_STATES}
        pids = {r: d["pid"] for r, d in mine.items()
                if isinstance(d.get("pid"), int) and pid_alive(d["pid"])}
        samples = self.sampler.sample(pids)
        steps = {r: (int(d["step"]), float(d["step_time"])) for r, d in mine.items()
                 if isinstance(d.get("step"), int) and isinstance(d.get("step_time"), float)}
        # Debugger activity anywhere in the job counts: a human on rank 0 keeps the
        # node whose ranks wait for rank 0 in a collective.
        debug = [float(d["debug_activity"]) for d in ranks.values()
                 if isinstance(d.get("debug_activity"), int | float)]
        if self.job_activity is not None and (elsewhere := self.job_activity()) is not None:
            debug.append(elsewhere)
        quiet = any(str(d.get("state", "")).startswith(QUIET_STATES) for d in mine.values())
        started = [float(d["started"]) for r, d in mine.items()
                   if r in pids and isinstance(d.get("started"), int | float)]
        obs = Observation(self.clock(), tuple(s.utilisation for s in samples), steps,
                          max(debug, default=None), quiet, ranks=len(pids),
                          started=max(started, default=None))
        return obs, samples, pids

    def tick(self) -> Action:
        """Sample once, decide, notify; returns the verdict's action."""
        obs, samples, pids = self.observe()
        self.state, verdict = decide(self.policy, self.state, obs)
        self.verdict = verdict
        if verdict.hung != self._hung:
            self._hung = verdict.hung
            if verdict.hung:
                diagnosis, stacks = self._stacks()
                self._notify("hung", verdict, obs, f"ranks {list(verdict.hung)} look hung: "
                             "device busy, step heartbeat stale"
                             + (f"; {diagnosis}" if diagnosis else ""),
                             diagnosis=diagnosis, stacks=stacks)
        if verdict.action is Action.WARN:
            then = ("it would be ended (dry run)" if self.spec.dry_run else "a checkpoint "
                    "will be requested and the node ended")
            self._notify("warn", verdict, obs, f"{verdict.reason}; {then} unless it is used")
        elif verdict.action is Action.RESUME:
            self._notify("resume", verdict, obs, "activity resumed; the node is kept")
        elif verdict.action is Action.STOP:
            what = ("would request a checkpoint and end the node (dry run)" if self.spec.dry_run
                    else f"requesting a checkpoint (SIGTERM to ranks {sorted(pids)}), "
                         f"SIGKILL after {self.grace:g}s")
            self._notify("stop", verdict, obs, f"{verdict.reason}: {what}")
            if self.spec.dry_run:
                # Report again after another whole window rather than never.
                self.state = replace(self.state, last_active=obs.time, warned=False,
                                     stopped=False)
            else:
                self.ended_at = obs.time
        self._write_status(verdict, obs, samples)
        return verdict.action

    def _notify(self, kind: str, verdict: Verdict, obs: Observation, message: str,
                diagnosis: str = "", stacks: str = "") -> None:
        event = IdleEvent(kind, self.run_dir.run_id, self.node, message, verdict.idle_for,
                          self.spec.timeout, self.spec.dry_run, verdict.hung, obs.time,
                          list(obs.utilisation), diagnosis, stacks)
        self.events.append(event)
        notify_all(self.notifiers, event)

    def _write_status(self, verdict: Verdict, obs: Observation,
                      samples: list[DeviceSample]) -> None:
        phase = verdict.phase.value
        if self.spec.dry_run and verdict.phase in (Phase.WARNED, Phase.ENDING):
            phase += " (dry run)"
        write_json(self.run_dir.idle_file(self.node), {
            "node": self.node, "phase": phase, "idle_for": round(verdict.idle_for, 3),
            "timeout": self.spec.timeout, "threshold": self.spec.threshold,
            "interval": self.interval, "sampler": self.sampler.kind,
            "devices": [vars(s) for s in samples], "hung": list(verdict.hung),
            "dry_run": self.spec.dry_run, "last_active": self.state.last_active,
            "ended_at": self.ended_at, "reason": verdict.reason, "updated": obs.time,
        })

    def _stacks(self) -> tuple[str, str]:
        """Every rank's stack and the diagnosis, for the ``hung`` notification (and a file)."""
        from fi_dist.hang.collect import collect
        from fi_dist.hang.ledger import read_ledgers

        directory = self.run_dir.path / "hang"
        if not read_ledgers(directory):
            return "", ""  # the hang doctor is off
        report = collect(directory, self.run_dir.run_id)
        text = report.text()
        with contextlib.suppress(OSError):
            (self.run_dir.path / f"hang-idle-node{self.node}.txt").write_text(text + "\n")
        return report.diagnosis.text, text

    # --- escalation ------------------------------------------------------------------
    def _end_node(self) -> None:
        """SIGTERM the node's ranks (checkpoint request); SIGKILL them after the grace."""
        # Only ranks still running: an exited rank's pid may already belong to another
        # process.
        pids = [d["pid"] for d in self.run_dir.ranks().values()
                if d.get("node") == self.node and isinstance(d.get("pid"), int)
                and d.get("state") not in _DONE_STATES]
        log.warning("fi-dist idle: node %d: SIGTERM to ranks' pids %s", self.node, pids)
        self._signal(pids, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if pid_alive(p) and not _zombie(p)]
            if not pids or self._stop.wait(0.1):
                break
        if self._stop.is_set():  # the host is ending on its own (the checkpoint request)
            return
        left = [p for p in pids if pid_alive(p) and not _zombie(p)]
        if left:
            log.warning("fi-dist idle: node %d: SIGKILL to %s after %gs", self.node, left,
                        self.grace)
            self._signal(left, signal.SIGKILL)

    def _signal(self, pids: list[int], sig: int) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self.kill(pid, sig)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
    except OSError:
        return True
