"""The hang doctor's files and watchers, without a process: the ledger, faulthandler's
text, a rank's own dump, the supervisor's watch, the summary's root cause, the settings."""

from __future__ import annotations

import faulthandler
import json
import os
import threading
from pathlib import Path

import pytest

from fi_dist import env_vars as ev
from fi_dist.cli import build_parser, spec_from_args
from fi_dist.contract import JobContract
from fi_dist.errors import ConfigError
from fi_dist.hang import ledger as L
from fi_dist.hang.collect import collect, parse_faulthandler, status_diagnosis
from fi_dist.hang.watch import HANG_EXIT_CODE, HangWatch
from fi_dist.rundir import RunDir
from fi_dist.runtime.hang.dumper import StackDumper, fr_progress
from fi_dist.spec import JobSpec
from fi_dist.summary import format_summary, summarize


def new_ledger(directory: Path, rank: int = 0, world: int = 2) -> L.Ledger:
    directory.mkdir(parents=True, exist_ok=True)
    return L.Ledger(L.ledger_path(directory, rank), rank, rank // 2, rank % 2, world,
                    threading.main_thread().ident or 0)


def test_ledger_round_trip(tmp_path: Path) -> None:
    led = new_ledger(tmp_path, rank=3, world=4)
    off = led.slot("default")
    led.issue(off, 1, 0, b"all_reduce", b"/job/train.py", 40, b"step")
    led.complete(off, 1)
    led.issue(off, 2, 1, b"broadcast", b"/job/train.py", 44, b"step")
    led.fail(off, "RuntimeError: Timed out waiting 8000ms")
    led.flight("0:default_pg", 9, 8, "gloo:allreduce")
    led.initialised()
    snap = L.read_ledger(L.ledger_path(tmp_path, 3))
    assert snap is not None
    assert (snap.rank, snap.node, snap.world, snap.pid, snap.inits) == (3, 1, 4, os.getpid(), 1)
    assert snap.alive and snap.state_text == "running" and not snap.ready
    py, fr = snap.slots
    assert (py.group, py.kind, py.issued, py.completed, py.op, py.site) == (
        "default", "python", 2, 1, "broadcast", "train.py:44 in step")
    assert py.in_flight and py.failed and py.error == "RuntimeError: Timed out waiting 8000ms"
    assert (fr.kind, fr.issued, fr.completed, fr.op) == ("flight recorder", 9, 8, "gloo:allreduce")
    led.ended(1, failed=True)
    snap = L.read_ledger(L.ledger_path(tmp_path, 3))
    assert snap is not None and not snap.alive and snap.state_text == "failed (exit 1)"
    assert os.stat(L.ledger_path(tmp_path, 3)).st_mode & 0o777 == 0o600


def test_ledger_groups_beyond_the_slots_share_the_last(tmp_path: Path) -> None:
    led = new_ledger(tmp_path)
    offs = [led.slot(f"g{i}") for i in range(L.NSLOTS + 5)]
    assert len(set(offs)) == L.NSLOTS and offs[-1] == offs[-6]
    snap = L.read_ledger(L.ledger_path(tmp_path, 0))
    assert snap is not None and snap.slots[-1].group == "(other groups)"


def test_a_recycled_pid_is_not_the_rank(tmp_path: Path) -> None:
    led = new_ledger(tmp_path)
    led._who = (os.getpid(), 0, 0, 0, 2, 12345, 0)  # same pid, another process start
    led.set_ready()
    snap = L.read_ledger(L.ledger_path(tmp_path, 0))
    assert snap is not None and snap.ready and not snap.alive


def test_a_torn_record_is_read_again(tmp_path: Path) -> None:
    led = new_ledger(tmp_path)
    off = led.slot("default")
    led.issue(off, 5, 4, b"all_reduce", b"/job/t.py", 1, b"f")
    L._GEN.pack_into(led.mm, off, L._GEN.unpack_from(led.mm, off)[0] + 1)  # mid-write
    timer = threading.Timer(0.002, lambda: L._GEN.pack_into(
        led.mm, off, L._GEN.unpack_from(led.mm, off)[0] + 1))
    timer.start()
    snap = L.read_ledger(L.ledger_path(tmp_path, 0), tries=2000)
    timer.join()
    assert snap is not None and snap.slots[0].issued == 5
    assert L._GEN.unpack_from(led.mm, off)[0] % 2 == 0


def test_hang_dir_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert L.hang_dir("/runs/r1") == Path("/runs/r1/hang")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    pod = L.hang_dir(None, "job-7")
    assert pod == tmp_path / f"fi-dist-{os.geteuid()}" / "job-7" / "hang"
    L.ensure_hang_dir(pod)
    assert pod.stat().st_mode & 0o777 == 0o700
    os.chmod(pod, 0o755)
    L.ensure_hang_dir(pod)  # ours: tightened
    assert pod.stat().st_mode & 0o777 == 0o700


def test_faulthandler_text_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "dump.txt"
    with open(path, "w") as f:
        faulthandler.dump_traceback(f, all_threads=True)
    threads = parse_faulthandler(path.read_text(), threading.main_thread().ident or 0)
    main = next(t for t in threads if t.main)
    assert main.name == "MainThread"
    assert main.frames[-1].func == "test_faulthandler_text_is_parsed"
    assert main.frames[-1].file == __file__


def test_a_rank_dump_holds_every_thread(tmp_path: Path) -> None:
    started = threading.Event()

    def prefetch() -> None:
        started.set()
        threading.Event().wait(5)

    t = threading.Thread(target=prefetch, name="prefetch", daemon=True)
    t.start()
    started.wait()
    answered: list[Path] = []  # the dump thread answers; it leaves itself out
    dumper = threading.Thread(target=lambda: answered.append(StackDumper(tmp_path, 0, None).answer()))
    dumper.start()
    dumper.join()
    path = answered[0]
    data = json.loads(path.read_text())
    names = {th["name"]: th for th in data["threads"]}
    assert names["MainThread"]["main"]
    assert "test_a_rank_dump_holds_every_thread" in [f[2] for f in names["MainThread"]["frames"]]
    assert any(f[2] == "prefetch" for f in names["prefetch"]["frames"])
    assert data["serial"] == 1 and data["flight_recorder"] is None
    assert path.stat().st_mode & 0o777 == 0o600


def test_flight_recorder_status_becomes_group_progress() -> None:
    fr = {"entries": [{"pg_id": 0, "process_group": ["0", "default_pg"],
                       "collective_seq_id": 6, "profiling_name": "gloo:all_reduce"}],
          "pg_status": {"0": {"last_enqueued_collective": "6",
                              "last_completed_collective": "5"},
                        "1": {"last_enqueued_collective": "-1",
                              "last_completed_collective": "-1"}}}
    assert fr_progress(fr) == [("0:default_pg", 6, 5, "gloo:all_reduce")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_watch_ends_a_job_without_progress_and_records_why(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run-1")
    leds = [new_ledger(run.path / "hang", r) for r in (0, 1)]
    offs = [led.slot("default") for led in leds]
    clock = Clock()
    watch = HangWatch(run, timeout=15, clock=clock, poll_every=0)
    for led, off in zip(leds, offs, strict=True):
        led.issue(off, 1, 0, b"all_reduce", b"/job/t.py", 40, b"step")
    assert watch.poll() is None  # the clock starts at the first ledger
    clock.now = 10
    leds[0].complete(offs[0], 1)  # progress: the window starts again
    assert watch.poll() is None
    clock.now = 24
    assert watch.poll() is None
    leds[0].issue(offs[0], 2, 1, b"all_reduce", b"/job/t.py", 40, b"step")
    clock.now = 24.5
    assert watch.poll() is None  # issuing is not progress: 14.5 s without
    clock.now = 40
    message = watch.poll()
    assert message is not None and "made no progress for 30s (--hang-timeout 15)" in message
    assert message.endswith("rank 1 is behind: rank 0 waits in all_reduce #2 (t.py:40 in "
                            "step); rank 1 completed #0 and waits in all_reduce #1")
    record = run.hang_report()
    assert record is not None and record["ends_job"] and record["exitcode"] == HANG_EXIT_CODE
    assert (run.path / "hang-0.txt").read_text().startswith("no progress for 30s")


def test_a_collective_that_raised_is_captured_and_leads_the_summary(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run-2")
    run.write_run({"run_id": "run-2"})
    led0, led1 = (new_ledger(run.path / "hang", r) for r in (0, 1))
    off0, off1 = led0.slot("default"), led1.slot("default")
    led0.issue(off0, 3, 2, b"all_reduce", b"/job/t.py", 40, b"step")
    led1.issue(off1, 2, 2, b"all_reduce", b"/job/t.py", 40, b"step")
    led1.complete(off1, 2)
    led0.fail(off0, "RuntimeError: Timed out waiting 8000ms for recv")
    watch = HangWatch(run, timeout=0, poll_every=0)
    assert watch.poll() is None  # captured, the job is not ended by the watch
    failed_at = L.read_ledger(L.ledger_path(run.path / "hang", 0)).slots[0].failed_at
    # The rank's own failure comes after its collective raised: the capture leads.
    run.write_rank(0, node=0, state="failed", error="RuntimeError: Timed out", ended=failed_at + 1)
    run.write_rank(1, node=0, state="running")
    import fi_dist.rundir as rd

    rd.write_json(run.node_file(0), {"failures": {"0": {"exitcode": 1, "message": "Timed out",
                                                        "timestamp": 0}}, "ended": failed_at + 2})
    summary = summarize(run, 2, 2, {0: 1})
    assert summary.root_cause is not None and summary.root_cause.label == "stuck collective"
    text = format_summary(summary)
    assert ("root cause (first failure): stuck collective: exit 1: rank 0 failed in all_reduce "
            "#3 (RuntimeError: Timed out waiting 8000ms for recv); rank 1 is behind: rank 0 "
            "failed in all_reduce #3 (t.py:40 in step); rank 1 completed #2 and ") in text
    # A rank that raised on its own before the collective did stays the root cause.
    run.write_rank(0, ended=failed_at - 1)
    assert summarize(run, 2, 2, {0: 1}).root_cause.label == "rank 0 (node 0)"


def test_status_asks_for_stacks_only_after_a_wait(tmp_path: Path) -> None:
    led = new_ledger(tmp_path, 0, world=1)
    off = led.slot("default")
    led.issue(off, 1, 0, b"all_reduce", b"/job/t.py", 40, b"step")
    assert status_diagnosis(tmp_path) == "no rank has waited 2s in a collective"
    assert status_diagnosis(tmp_path / "none") == ""
    # Waited long enough: a full collection (this process is "rank 0", not ready: no signal)
    text = status_diagnosis(tmp_path, waited=0)
    assert text.startswith("every rank waits in all_reduce #1")
    report = collect(tmp_path, "r")
    assert report.dumps[0].note == "starting (its dump thread is not ready yet)"


def test_settings_reach_the_contract_and_the_cli() -> None:
    spec = spec_from_args(build_parser().parse_args(
        ["run", "--hang-timeout", "15", "--nnodes", "2", "train.py"]))
    assert spec.hang_timeout == 15 and spec.hang_doctor
    spec = spec_from_args(build_parser().parse_args(["run", "--no-hang-doctor", "train.py"]))
    job = JobContract.from_spec(spec, "local")
    assert not job.hang_doctor and job.to_env()[ev.FI_DIST_HANG_DOCTOR] == "0"
    assert JobContract.from_env(job.to_env()) == job
    assert ev.FI_DIST_HANG_DOCTOR not in JobContract.from_spec(JobSpec(script="t"), "local").to_env()
    with pytest.raises(ConfigError, match="hang_timeout must be a number >= 0"):
        JobSpec(script="t", hang_timeout=-1)
    with pytest.raises(ConfigError, match="hang_timeout: the pytorchjob launcher has no"):
        JobSpec(script="t", hang_timeout=10, launcher="pytorchjob")
    with pytest.raises(ConfigError, match="hang_timeout needs the hang doctor"):
        JobSpec(script="t", hang_timeout=10, hang_doctor=False)


class Busy:
    """A sampler that always sees a busy device (NCCL spinning in a collective)."""

    kind, available = "fake", True

    def sample(self, pids: dict[int, int]) -> list:
        from fi_dist.runtime.idle.sampler import DeviceSample

        return [DeviceSample("gpu0", 100.0)]

    def close(self) -> None:
        pass


def test_the_idle_cullers_hung_notification_carries_the_stacks(tmp_path: Path) -> None:
    from fi_dist.runtime.idle.watcher import IdleWatcher
    from fi_dist.spec import IdleSpec

    run = RunDir(tmp_path / "run-3")
    led = new_ledger(run.path / "hang", 0, world=1)
    off = led.slot("default")
    led.issue(off, 4, 3, b"all_reduce", b"/job/t.py", 40, b"step")
    sent: list = []

    class Collect:
        name = "test"

        def send(self, event: object) -> None:
            sent.append(event)

    clock = Clock()
    watcher = IdleWatcher(IdleSpec(enabled=True, timeout=1000, interval=1, hang_factor=2),
                          run, 0, Busy(), [Collect()], clock=clock)
    for t, step in ((0.0, 1), (1.0, 2), (20.0, 2)):  # two steps 1 s apart, then none
        clock.now = t
        run.write_rank(0, node=0, pid=os.getpid(), state="running", step=step,
                       step_time=min(t, 1.0))
        watcher.tick()
    hung = [e for e in sent if e.kind == "hung"]
    assert len(hung) == 1 and hung[0].hung == (0,)
    assert hung[0].diagnosis.startswith("every rank waits in all_reduce #4 (t.py:40 in step)")
    assert hung[0].message.endswith(hung[0].diagnosis)
    assert hung[0].stacks.splitlines()[-1] == f"diagnosis: {hung[0].diagnosis}"
    assert json.loads(json.dumps(hung[0].to_dict()))["stacks"] == hung[0].stacks  # the webhook
    assert (run.path / "hang-idle-node0.txt").read_text().startswith("fi-dist stacks: run run-3")


def test_a_previous_attempts_failed_collective_is_not_captured_again(tmp_path: Path) -> None:
    # A restart after a lost node: until the new rank 0 rewrites its ledger, the file still
    # shows the collective the last attempt failed in. It must not become this attempt's
    # root cause (a job that then succeeds would be reported FAILED).
    run = RunDir(tmp_path / "run-3")
    run.write_run({"run_id": "run-3"})
    led0 = new_ledger(run.path / "hang", 0)
    off0 = led0.slot("default")
    led0.issue(off0, 15, 14, b"all_reduce", b"/job/t.py", 40, b"step")
    led0.fail(off0, "RuntimeError: Connection closed by peer")
    watch = HangWatch(run, timeout=0, poll_every=0)
    assert watch.poll() is None and run.hang_report() is not None  # attempt 0 captures it
    run.clear_attempt_state()
    watch.reset(1)
    assert watch.poll() is None and run.hang_report() is None
    led1 = new_ledger(run.path / "hang", 1)  # a failure of this attempt is captured
    off1 = led1.slot("default")
    led1.issue(off1, 3, 2, b"all_reduce", b"/job/t.py", 40, b"step")
    led1.fail(off1, "RuntimeError: Timed out")
    assert watch.poll() is None
    report = run.hang_report()
    assert report is not None and report["attempt"] == 1 and "rank 1 failed" in report["trigger"]


def test_a_collective_error_the_job_survived_is_not_a_failure(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run-4")
    run.write_run({"run_id": "run-4"})
    led0 = new_ledger(run.path / "hang", 0)
    off0 = led0.slot("default")
    led0.issue(off0, 3, 2, b"all_reduce", b"/job/t.py", 40, b"step")
    led0.fail(off0, "RuntimeError: Timed out")  # caught by the script, which went on
    HangWatch(run, timeout=0, poll_every=0).poll()
    assert run.hang_report() is not None
    for r in (0, 1):
        run.write_rank(r, node=0, state="exited", exitcode=0)
    summary = summarize(run, 2, 2, {0: 0})
    assert summary.root_cause is None and summary.exitcode == 0
