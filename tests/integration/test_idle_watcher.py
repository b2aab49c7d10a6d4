"""The watcher on a real run directory and real processes, with its clock injected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fi_dist.rundir import RunDir, read_json
from fi_dist.runtime.idle import IDLE_EXIT_CODE, IdleWatcher
from fi_dist.runtime.idle.notify import LogNotifier
from fi_dist.runtime.idle.sampler import CpuSampler
from fi_dist.spec import IdleSpec

STUBBORN = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")


@pytest.fixture
def stubborn():
    """A 'rank' that ignores SIGTERM (a checkpoint that never finishes)."""
    p = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    yield p
    if p.poll() is None:
        p.kill()
    p.wait()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path, pid: int, clock: Clock, **spec_kw) -> IdleWatcher:
    run = RunDir(tmp_path / "run-1")
    # A rank on node 0 whose client attached once (debug_activity) and then went silent,
    # plus a rank of another node the watcher must leave alone.
    run.write_rank(0, node=0, pid=pid, state="paused at train.py:12",
                   debug_activity=clock.now)
    run.write_rank(1, node=1, pid=os.getpid(), state="running")
    spec = IdleSpec(enabled=True, timeout=2.0, interval=0.5, warn_lead=1.0, **spec_kw)
    return IdleWatcher(spec, run, 0, CpuSampler(), [LogNotifier()], grace=0.5, clock=clock)


def test_idle_node_is_warned_then_checkpointed_then_killed(tmp_path, stubborn):
    clock = Clock()
    w = make(tmp_path, stubborn.pid, clock)
    kinds = []
    for _ in range(5):
        kinds.append(w.tick().value)
        clock.now += 0.5
    assert kinds == ["keep", "keep", "warn", "keep", "stop"]
    assert [e.kind for e in w.events] == ["warn", "stop"]
    assert w.ended_at == pytest.approx(1002.0)
    status = w.run_dir.node_idle()
    assert set(status) == {0}
    assert status[0]["phase"] == "ending" and status[0]["sampler"] == "cpu"
    started = time.monotonic()
    w._end_node()  # SIGTERM is ignored: SIGKILL after the 0.5 s grace
    assert stubborn.wait(5) == -signal.SIGKILL
    assert 0.4 < time.monotonic() - started < 4.0
    result = {"failures": {"0": {"exitcode": -9}}, "ended": 2000.0, "exitcode": 1}
    assert w.finish(result, 1) == IDLE_EXIT_CODE
    assert result["failures"] == {} and result["idle_ended_ranks"] == {"0": {"exitcode": -9}}
    assert result["ended"] == 1002.0 and result["exitcode"] == IDLE_EXIT_CODE
    assert result["error"].startswith("ended by the idle culler: idle for 2s")


def test_dry_run_reports_and_never_signals(tmp_path, stubborn):
    clock = Clock()
    w = make(tmp_path, stubborn.pid, clock, dry_run=True)
    for _ in range(10):
        w.tick()
        clock.now += 0.5
    # Reported once per window, the window starting again after each report.
    assert [e.kind for e in w.events] == ["warn", "stop", "warn", "stop"]
    assert all(e.dry_run for e in w.events)
    assert "(dry run)" in w.events[1].message
    assert stubborn.poll() is None and w.ended_at is None
    assert w.finish({"exitcode": 0}, 0) == 0
    assert read_json(tmp_path / "run-1" / "nodes" / "0.idle.json")["dry_run"] is True


def test_background_loop_survives_a_failed_poll(tmp_path, stubborn):
    class Flaky(CpuSampler):
        calls = 0

        def sample(self, pids):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise OSError("transient /proc read error")
            return super().sample(pids)

    run = RunDir(tmp_path / "run-2")
    run.write_rank(0, node=0, pid=stubborn.pid, state="running", debug_activity=time.time())
    spec = IdleSpec(enabled=True, timeout=1.0, interval=0.1, warn_lead=0.5, dry_run=True)
    w = IdleWatcher(spec, run, 0, Flaky(), [], grace=0.1)
    w.start()
    deadline = time.monotonic() + 10
    while not any(e.kind == "stop" for e in w.events) and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    assert Flaky.calls > 3
    assert any(e.kind == "stop" for e in w.events)
