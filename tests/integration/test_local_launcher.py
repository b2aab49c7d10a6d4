"""`fi-dist run` end to end: real node agents, real torchrun semantics, real gloo ranks."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fi_dist import procs, rundir
from tests.support.cli import EXAMPLES, fi_dist_cmd

SCRIPTS = Path(__file__).parent / "scripts"
pytestmark = pytest.mark.timeout(240)


def probes(output: str) -> dict[int, dict]:
    # raw_decode: another process's write may share the line (print's text and newline
    # are two writes on one pipe).
    decode = json.JSONDecoder().raw_decode
    views = [decode(line.split("PROBE ", 1)[1])[0] for line in output.splitlines()
             if "PROBE " in line]
    return {v["rank"]: v for v in views}


def checksum(output: str) -> str:
    found = re.findall(r"^\[node0 rank0\] final checksum: ([0-9a-f]+)$", output, re.M)
    assert len(found) == 1, output[-3000:]
    return found[0]


def assert_no_processes_left(workdir: Path) -> None:
    run = rundir.current_run(workdir, require_alive=False)
    assert procs.job_processes(run.run_id) == []


def test_2x2_every_rank_sees_its_env_and_allreduce_is_right(run_cli, workdir):
    r = run_cli("run", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
                "--plain", str(SCRIPTS / "env_probe.py"))
    assert r.returncode == 0, r.output[-3000:]
    views = probes(r.stdout)
    assert sorted(views) == [0, 1, 2, 3]
    for rank, v in views.items():
        node, local = divmod(rank, 2)
        assert (v["dist_rank"], v["dist_world"], v["world_size"]) == (rank, 4, 4)
        assert (v["node_rank"], v["local_rank"], v["local_world_size"]) == (node, local, 2)
        assert v["node_addr"] == f"127.0.0.{node + 2}"
        assert v["master_addr"] == "127.0.0.2" and v["launcher"] == "local"
        assert v["allreduce"] == 10.0
        # The node-level (pod) env the operator would inject reaches every rank unchanged.
        assert v["env"]["PET_NNODES"] == "2" and v["env"]["PET_NPROC_PER_NODE"] == "2"
        assert v["env"]["PET_NODE_RANK"] == str(node) and v["env"]["GROUP_RANK"] == str(node)
        assert v["env"]["PET_MASTER_ADDR"] == "127.0.0.2" and v["env"]["PYTHONUNBUFFERED"] == "0"
    # Every line of rank output carries its node and rank.
    for line in r.stdout.splitlines():
        if "PROBE " in line:
            rank = json.JSONDecoder().raw_decode(line.split("PROBE ", 1)[1])[0]["rank"]
            assert line.startswith(f"[node{rank // 2} rank{rank}] PROBE ")
    assert "job succeeded: 4/4 ranks exited 0" in r.stdout
    assert_no_processes_left(workdir)


def test_checksum_identical_across_runs(run_cli):
    args = ("run", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", "--plain",
            str(EXAMPLES / "ddp_train.py"), "--", "--steps", "20")
    first, second = run_cli(*args), run_cli(*args)
    assert first.returncode == 0 and second.returncode == 0, first.output[-2000:]
    assert checksum(first.stdout) == checksum(second.stdout)
    # The checksum is the last thing rank 0 prints.
    rank0 = [ln for ln in first.stdout.splitlines() if ln.startswith("[node0 rank0]")]
    assert rank0[-1].startswith("[node0 rank0] final checksum: ")
    assert len(re.findall(r"^\[node\d rank\d\] done: 20 steps", first.stdout, re.M)) == 4


def test_failing_rank_is_the_root_cause_and_nothing_is_left(run_cli, workdir):
    r = run_cli("run", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
                "--grace", "5", "--plain", str(SCRIPTS / "fail_rank.py"))
    assert r.returncode == 1, r.output[-3000:]
    assert "job FAILED" in r.stdout
    assert ("root cause (first failure): rank 3 (node 1): exit 1: "
            "ValueError: deliberate failure on the last rank") in r.stdout
    assert 'fail_rank.py", line 11' in r.stdout  # the user's frame, not fi-dist's
    assert_no_processes_left(workdir)


def _start_long_job(workdir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        fi_dist_cmd("run", "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0",
                    "--plain", *extra, str(EXAMPLES / "ddp_train.py"), "--",
                    "--steps", "100000", "--step-sleep", "0.05"),
        cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_all_ranks_running(workdir: Path, n: int = 4, timeout: float = 120) -> rundir.RunDir:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            run = rundir.current_run(workdir)
            ranks = run.ranks()
            if len(ranks) == n and all(r.get("state") == "running" for r in ranks.values()):
                return run
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError("ranks did not come up")


def test_preempt_node_ends_its_ranks(workdir):
    job = _start_long_job(workdir, "--grace", "5")
    try:
        run = _wait_all_ranks_running(workdir)
        node1 = procs.job_processes(run.run_id, node=1)
        assert len(node1) >= 3  # node agent + 2 ranks
        status = subprocess.run(fi_dist_cmd("status", "--json"), cwd=workdir,
                                capture_output=True, text=True, timeout=60)
        rows = json.loads(status.stdout)["ranks"]
        assert [(r["rank"], r["node"], r["state"]) for r in rows] == [
            (0, 0, "running"), (1, 0, "running"), (2, 1, "running"), (3, 1, "running")]
        assert all(isinstance(r["pid"], int) for r in rows)
        p = subprocess.run(fi_dist_cmd("preempt", "--node", "1", "--grace", "5"), cwd=workdir,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert "preempting node 1" in p.stdout
        out, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 143, out[-3000:]
    assert "root cause (first failure): node 1: exit 143: preempted" in out
    assert procs.job_processes(run.run_id) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_stops_every_rank(workdir, sig):
    job = _start_long_job(workdir, "--grace", "3")
    try:
        run = _wait_all_ranks_running(workdir)
        pids = [r["pid"] for r in run.ranks().values()]
        job.send_signal(sig)
        job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode != 0
    assert procs.job_processes(run.run_id) == []
    for pid in pids:
        assert not rundir.pid_alive(pid) or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_launcher_killed_hard_leaves_no_ranks(workdir):
    # SIGKILL to fi-dist run leaves no launcher to clean up, and locally no kubelet ends
    # the "pods": each node agent sees its lifeline to the launcher close and stops its
    # ranks itself (SIGTERM, SIGKILL after the grace period). (netns: test_netns.py.)
    job = _start_long_job(workdir, "--grace", "3")
    try:
        run = _wait_all_ranks_running(workdir)
        assert len(procs.job_processes(run.run_id)) >= 6  # 2 node agents + 4 ranks
        job.kill()
        job.wait(timeout=30)
        deadline = time.monotonic() + 3 + 5  # the grace period, and time to notice
        while procs.job_processes(run.run_id) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        job.kill()
    assert procs.job_processes(run.run_id) == []


def test_module_runs_without_cli(workdir):
    # `python -m fi_dist.cli` and the console script are the same entry point.
    p = subprocess.run([sys.executable, "-m", "fi_dist.cli", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "preempt" in p.stdout


def test_rank_output_arrives_while_the_job_runs(workdir):
    # The operator's PYTHONUNBUFFERED=0 means "buffered" to CPython: without the node
    # agent's own line buffering, rank lines reached fi-dist run only at exit. The rank
    # waits for a reply that the test sends only after it has seen the rank's line.
    go = workdir / "go"
    script = workdir / "talk_then_wait.py"
    script.write_text(
        "import pathlib, sys, time\n"
        "print('hello from the rank', flush=True)\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "for _ in range(300):\n"
        "    if go.exists():\n"
        "        sys.exit(0)\n"
        "    time.sleep(0.1)\n"
        "sys.exit(3)\n")
    job = subprocess.Popen(fi_dist_cmd("run", "--master-port", "0", "--plain", "--grace", "3",
                                       str(script)),
                           cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert job.stdout is not None
        for line in job.stdout:
            if "hello from the rank" in line:
                assert line.startswith("[node0 rank0] ")
                go.touch()
                break
        out, _ = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 0, out[-2000:]
