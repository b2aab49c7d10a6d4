"""The supervisor's rules, the same for every launcher: retries, the peers' window, stops.

A scripted backend plays the units (real processes are the integration tests' job):
each attempt is a list of (seconds after start, unit, exit code) it reports.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from fi_dist.console import PlainView
from fi_dist.rundir import RunDir
from fi_dist.spec import JobSpec
from fi_dist.summary import RankOutcome, RootCause, Summary
from fi_dist.supervisor import Backend, Supervisor, retryable


class Scripted(Backend):
    def __init__(self, attempts: list[list[tuple[float, int, int]]]) -> None:
        self.attempts = attempts
        self.started: list[int] = []
        self.terminated: list[float] = []
        self.closed = False
        self._t0 = 0.0
        self._events: list[tuple[float, int, int]] = []
        self._stopped = False

    def start(self, attempt: int) -> list[int]:
        self.started.append(attempt)
        self._t0 = time.monotonic()
        self._events = list(self.attempts[attempt])
        self._stopped = False
        return sorted({u for _, u, _ in self._events})

    def poll(self, timeout: float) -> tuple[list[tuple[int, str]], dict[int, int]]:
        time.sleep(timeout)
        now = time.monotonic() - self._t0
        ended = {u: c for t, u, c in self._events if t <= now}
        if self._stopped:  # SIGTERM reached the units that were still running
            ended = {u: ended.get(u, 143) for _, u, _ in self._events}
        return [(0, f"t={now:.2f}")], ended

    def terminate(self, grace: float) -> None:
        self.terminated.append(time.monotonic() - self._t0)
        self._stopped = True

    def summarize(self, exits: dict[int, int | None]) -> Summary:
        bad = [(u, c) for u, c in exits.items() if c]
        root = RootCause(f"node {bad[0][0]}", bad[0][1], "x", None, 0.0) if bad else None
        return Summary([RankOutcome(u, u, c) for u, c in exits.items()], root,
                       bad[0][1] if bad else 0)

    def close(self) -> None:
        self.closed = True


def supervise(tmp_path: Path, backend: Scripted, max_restarts: int = 0,
              peer_window: float = 0.3) -> tuple[Supervisor, int]:
    spec = JobSpec(script="t.py", nnodes=2, max_restarts=max_restarts, grace_period=1)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    sup = Supervisor(spec, backend, PlainView(), run, peer_window=peer_window)
    return sup, sup.run()


@pytest.mark.parametrize(("code", "retried"), [(143, True), (137, True), (1, False),
                                               (75, False)])
def test_only_retryable_exits_restart_the_job(tmp_path, code, retried):
    backend = Scripted([[(0.0, 0, code), (0.0, 1, code)], [(0.0, 0, 0), (0.0, 1, 0)]])
    sup, exitcode = supervise(tmp_path, backend, max_restarts=1)
    assert retryable(code) is retried
    assert backend.started == ([0, 1] if retried else [0])
    assert exitcode == (0 if retried else code)
    assert sup.run_dir.read_run()["job_state"] == ("succeeded" if retried else "failed")
    assert backend.closed


def test_restarts_stop_at_max_restarts(tmp_path):
    backend = Scripted([[(0.0, 0, 143), (0.0, 1, 0)]] * 3)
    _, exitcode = supervise(tmp_path, backend, max_restarts=2)
    assert backend.started == [0, 1, 2] and exitcode == 143


def test_peers_get_a_window_then_are_stopped(tmp_path):
    # Node 0 fails at once; node 1 would run for a minute: it is stopped after the window.
    backend = Scripted([[(0.0, 0, 1), (60.0, 1, 0)]])
    _, exitcode = supervise(tmp_path, backend, peer_window=0.3)
    assert len(backend.terminated) == 1 and 0.3 <= backend.terminated[0] < 5
    assert exitcode == 1


def test_a_peer_failing_inside_the_window_is_not_stopped(tmp_path):
    backend = Scripted([[(0.0, 0, 1), (0.1, 1, 1)]])
    supervise(tmp_path, backend, peer_window=2.0)
    assert backend.terminated == []


def test_sigterm_to_the_supervisor_stops_every_unit(tmp_path):
    backend = Scripted([[(60.0, 0, 0), (60.0, 1, 0)]])
    threading.Timer(0.3, lambda: signal.raise_signal(signal.SIGTERM)).start()
    sup, exitcode = supervise(tmp_path, backend)
    assert len(backend.terminated) == 1 and exitcode == 143
    assert sup.run_dir.read_run()["job_state"] == "cancelled"
    assert signal.getsignal(signal.SIGTERM) is not sup._on_signal  # handler restored


class Losing(Scripted):
    """Node 1 hangs (never exits on its own) and its liveness says it is lost at ``at``."""

    def __init__(self, attempts: list[list[tuple[float, int, int]]], at: float) -> None:
        super().__init__(attempts)
        self.at = at
        self.reported = False

    def start(self, attempt: int) -> list[int]:
        self.reported = False
        return super().start(attempt)

    def lost_units(self) -> dict[int, str]:
        if not self.reported and time.monotonic() - self._t0 >= self.at:
            self.reported = True
            return {1: "node 1 lost: no heartbeat"}
        return {}

    def summarize(self, exits: dict[int, int | None]) -> Summary:
        self.exits = dict(exits)
        return super().summarize(exits)


def test_a_lost_node_fails_with_137_at_once_and_the_job_restarts(tmp_path):
    # No peers' window for a lost node: its peers hang in collectives with it.
    backend = Losing([[(60.0, 0, 0), (60.0, 1, 0)], [(0.0, 0, 0), (0.0, 1, 0)]], at=0.2)
    _, exitcode = supervise(tmp_path, backend, max_restarts=1, peer_window=5.0)
    assert backend.started == [0, 1] and exitcode == 0
    assert len(backend.terminated) == 1 and backend.terminated[0] < 2.0


def test_a_lost_node_without_restarts_ends_the_job_with_137(tmp_path):
    backend = Losing([[(60.0, 0, 0), (60.0, 1, 0)]], at=0.2)
    _, exitcode = supervise(tmp_path, backend, peer_window=5.0)
    # The lost unit's code is 137 whatever its process does later (the others: SIGTERM).
    assert backend.exits == {0: 143, 1: 137} and exitcode != 0 and backend.started == [0]
