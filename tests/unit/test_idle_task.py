"""The decorator's culler host without a process: its run directory, the SIGTERM rule,
the end of a pod that never had a rank (no signal sent), the restarts a resume can use."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from fi_dist import contract
from fi_dist import env_vars as ev
from fi_dist.rundir import RunDir, write_json
from fi_dist.runtime.environment import RankEnvironment
from fi_dist.runtime.idle.task import IdleCulledError, TaskCuller, pod_run_dir
from fi_dist.spec import IdleSpec

SPEC = IdleSpec(enabled=True, timeout=60, interval=1)


def env(rank: int = 1, node: int = 1) -> RankEnvironment:
    return RankEnvironment.from_env({"RANK": str(rank), "WORLD_SIZE": "2",
                                     "FI_DIST_NODE_RANK": str(node), "FI_DIST_LAUNCHER": "local"})


def test_a_pod_without_a_launcher_run_dir_gets_a_private_one(monkeypatch, tmp_path):
    monkeypatch.setenv(ev.FI_DIST_RUN_DIR, "")  # restored to what it was (unset) after
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    run = pod_run_dir(env(), "flyte-execution-abc")
    os.environ.pop(ev.FI_DIST_RUN_DIR)
    contract.reset_current()
    again = pod_run_dir(env(), "flyte-execution-abc")  # another rank of the pod: the same
    assert run == again and run.path.name.endswith("-node1")
    assert oct(run.path.stat().st_mode & 0o777) == "0o700"
    assert os.environ[ev.FI_DIST_RUN_DIR] == str(run.path)
    assert contract.current().run_dir == str(run.path)  # heartbeats now land there
    os.environ.pop(ev.FI_DIST_RUN_DIR)
    contract.reset_current()
    assert pod_run_dir(env(), "another-execution") != run


def test_sigterm_raises_once_the_pod_was_culled_else_does_what_it_did(tmp_path):
    run = RunDir(tmp_path)
    culler = TaskCuller(SPEC, env(), run, grace=5)
    seen: list[int] = []
    culler._previous = lambda signum, frame: seen.append(signum)
    culler._on_sigterm(signal.SIGTERM, None)  # not culled: a preemption, the old handler
    assert seen == [signal.SIGTERM]
    write_json(run.idle_file(1), {"ended_at": 12.0, "reason": "idle for 61s (timeout 60s)",
                                  "dry_run": False})
    with pytest.raises(IdleCulledError, match=r"ended this task on rank 1 \(node 1\): idle for "
                                              r"61s .* whole 60s window"):
        culler._on_sigterm(signal.SIGTERM, None)
    write_json(run.idle_file(1), {"ended_at": 12.0, "reason": "x", "dry_run": True})
    assert culler.culled() is None  # a dry run reports, never ends


def test_the_termination_log_is_only_written_where_kubernetes_mounted_it(tmp_path):
    run = RunDir(tmp_path / "run")
    write_json(run.idle_file(1), {"ended_at": 1.0, "reason": "idle for 60s", "dry_run": False})
    missing = tmp_path / "termination-log"
    TaskCuller(SPEC, env(), run, 5, termination_log=missing)._write_termination_log()
    assert not missing.exists()
    missing.write_text("")
    TaskCuller(SPEC, env(), run, 5, termination_log=missing)._write_termination_log()
    assert "the idle culler ended this task" in missing.read_text()


def test_restarts_a_resume_can_use(monkeypatch):
    from fi_dist.runtime.interactive import restarts_left

    for name in (ev.TORCHELASTIC_MAX_RESTARTS, ev.TORCHELASTIC_RESTART_COUNT, ev.FI_DIST_RUN_ID,
                 ev.FI_DIST_MAX_RESTARTS, ev.FI_DIST_ATTEMPT):
        monkeypatch.delenv(name, raising=False)
    assert restarts_left() is None  # a Flyte pod: its operator's restart policy decides
    monkeypatch.setenv(ev.FI_DIST_RUN_ID, "r1")
    monkeypatch.setenv(ev.FI_DIST_MAX_RESTARTS, "3")
    monkeypatch.setenv(ev.FI_DIST_ATTEMPT, "1")
    contract.reset_current()
    assert restarts_left() == 2  # fi-dist run --max-restarts 3, attempt 1
    monkeypatch.setenv(ev.TORCHELASTIC_MAX_RESTARTS, "2")
    monkeypatch.setenv(ev.TORCHELASTIC_RESTART_COUNT, "2")
    assert restarts_left() == 2  # torchelastic's are used up, the launcher's are not


def test_own_pid_gets_the_signal_in_its_main_thread(monkeypatch, tmp_path):
    culler = TaskCuller(SPEC, env(), RunDir(tmp_path), 5)
    sent: list[tuple[str, int, int]] = []
    monkeypatch.setattr(signal, "pthread_kill", lambda t, s: sent.append(("thread", t, s)))
    monkeypatch.setattr(os, "kill", lambda p, s: sent.append(("pid", p, s)))
    culler._kill(os.getpid(), signal.SIGTERM)
    culler._kill(12345, signal.SIGTERM)
    culler._kill(os.getpid(), signal.SIGKILL)
    assert sent == [("thread", culler._main, signal.SIGTERM), ("pid", 12345, signal.SIGTERM),
                    ("pid", os.getpid(), signal.SIGKILL)]


def test_a_private_run_dir_goes_with_the_pods_last_rank(tmp_path: Path):
    two = RankEnvironment.from_env({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2",
                                    "LOCAL_WORLD_SIZE": "2", "FI_DIST_LAUNCHER": "local"})
    run = RunDir(tmp_path / "pod")
    run.write_rank(0, node=0, pid=1, state="exited")
    run.write_rank(1, node=0, pid=2, state="running")
    TaskCuller(SPEC, two, run, 5, owns_run_dir=True).stop()
    assert run.path.exists()  # rank 1 still runs
    run.write_rank(1, node=0, pid=2, state="failed")
    TaskCuller(SPEC, two, run, 5, owns_run_dir=False).stop()
    assert run.path.exists()  # the job's own run directory: never removed
    TaskCuller(SPEC, two, run, 5, owns_run_dir=True).stop()
    assert not run.path.exists()
    run.write_rank(0, node=0, pid=1, state="exited")
    run.write_rank(1, node=0, pid=2, state="exited")
    write_json(run.idle_file(0), {"ended_at": 1.0, "reason": "idle", "dry_run": False})
    TaskCuller(SPEC, two, run, 5, owns_run_dir=True).stop()
    assert run.path.exists()  # a cull is kept: a restarted worker group reads it
