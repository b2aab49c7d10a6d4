"""The Ray launcher end to end: rank actors, gloo among them, same result as local.

Real Ray on loopback: a single-node ``ray.init()`` started by ``fi-dist run`` itself,
and a 2-node cluster (``ray.cluster_utils.Cluster`` in its own process, see
ray_cluster.py) that the CLI joins through RAY_ADDRESS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ddp_train.py"
HERE = Path(__file__).resolve().parent


def train_args(ckpt: Path, *extra: str) -> list[str]:
    """examples/ddp_train.py, checkpointing every 4 steps (the same on every launcher)."""
    return [str(EXAMPLE), "--", "--steps", "20", "--ckpt-dir", str(ckpt), "--ckpt-every", "4",
            *extra]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fi_dist.cli", *args]


def checksum(output: str) -> str:
    found = re.findall(r"final checksum: ([0-9a-f]+)", output)
    assert len(found) == 1, output[-3000:]
    return found[0]


def run_dir(work: Path) -> Path:
    run_id = (work / ".fi-dist" / "current").read_text().strip()
    return work / ".fi-dist" / "runs" / run_id


class RayCluster:
    """The 2-node loopback cluster process."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HERE / "ray_cluster.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        line = self._read("ADDRESS ", 180)
        self.address = line.split()[1]

    def _read(self, prefix: str, timeout: float) -> str:
        box: list[str] = []

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(prefix):
                    box.append(line)
                    return

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(timeout)
        assert box, f"ray cluster helper did not print {prefix!r} in {timeout}s"
        return box[0]

    def preempt(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("preempt\n")
        self.proc.stdin.flush()
        self._read("PREEMPTED", 180)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()


@pytest.fixture(scope="module")
def local_checksum(tmp_path_factory: pytest.TempPathFactory) -> str:
    """examples/ddp_train.py on the local launcher, 2 nodes x 2 ranks."""
    work = tmp_path_factory.mktemp("local")
    out = subprocess.run(cli("run", "--plain", "--nnodes", "2", "--nproc-per-node", "2",
                             "--master-port", "0", *train_args(work / "ckpt")),
                         cwd=work, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return checksum(out.stdout)


@pytest.fixture(scope="module")
def two_nodes() -> RayCluster:
    cluster = RayCluster()
    yield cluster
    cluster.close()


def no_ray_address() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def test_single_node_ray_matches_local(tmp_path: Path, local_checksum: str) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = subprocess.run(cli("run", "--launcher", "ray", "--nnodes", "2", "--nproc-per-node",
                             "2", *train_args(tmp_path / "ckpt")),
                         cwd=tmp_path, env={**no_ray_address(), "HOME": str(home)},
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert checksum(out.stdout) == local_checksum
    assert "[node1 rank3] done: 20 steps" in out.stdout
    run = run_dir(tmp_path)
    info = json.loads((run / "run.json").read_text())
    assert info["job_state"] == "succeeded" and info["launcher"] == "ray"
    assert {p["ip"] for p in info["placement"].values()} == {"127.0.0.1"}  # loopback only
    ranks = {int(f.stem): json.loads(f.read_text()) for f in (run / "ranks").glob("*.json")}
    assert {r: (d["node"], d["local_rank"], d["exitcode"]) for r, d in ranks.items()} == {
        0: (0, 0, 0), 1: (0, 1, 0), 2: (1, 0, 0), 3: (1, 1, 0)}
    # status and per-rank logs by run id
    # status by run id (the run names its launcher) and the newest run (no id)
    for args in ([run.name], [run.name, "--launcher", "ray"], []):
        st = subprocess.run(cli("status", *args), cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
        lines = st.stdout.splitlines()
        assert lines[0] == f"{run.name}: succeeded", st.stderr
        assert [line.split()[-2:] for line in lines[2:]] == [["exited", "0"]] * 4, st.stdout
    logs = subprocess.run(cli("logs", run.name, "--launcher", "ray", "--rank", "0"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "final checksum" in logs.stdout and "rank1]" not in logs.stdout
    assert not (home / ".ray" / "auth_token").exists()  # RAY_AUTH_MODE=disabled


def test_two_node_ray_cluster_matches_local(tmp_path: Path, local_checksum: str,
                                            two_nodes: RayCluster) -> None:
    env = {**os.environ, "RAY_ADDRESS": two_nodes.address}
    out = subprocess.run(cli("run", "--config", str(REPO / "configs" / "ray_local_2x2.toml"),
                             *train_args(tmp_path / "ckpt")),
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert checksum(out.stdout) == local_checksum
    placement = json.loads((run_dir(tmp_path) / "run.json").read_text())["placement"]
    nodes = {r: p["node_id"] for r, p in placement.items()}
    # One bundle per spec node, on distinct Ray nodes; ranks of a node share one.
    assert nodes["0"] == nodes["1"] and nodes["2"] == nodes["3"] and nodes["0"] != nodes["2"]


def test_preempted_ray_node_resumes_from_the_last_checkpoint(
        tmp_path: Path, local_checksum: str, two_nodes: RayCluster) -> None:
    """A Ray node vanishes (no SIGTERM, no agreed save): restart, resume, same result."""
    env = {**os.environ, "RAY_ADDRESS": two_nodes.address}
    log = tmp_path / "job.log"
    with log.open("w") as fh:
        job = subprocess.Popen(cli("run", "--launcher", "ray", "--nnodes", "2",
                                   "--nproc-per-node", "2", "--max-restarts", "1",
                                   *train_args(tmp_path / "ckpt", "--step-sleep", "0.4")),
                               cwd=tmp_path, env=env, stdout=fh, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while "[node1 rank2] step 10 " not in log.read_text():  # checkpoints exist
                assert job.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
            two_nodes.preempt()  # the node of ranks 2 and 3 is gone, a new one joins
            assert job.wait(400) == 0, log.read_text()[-3000:]
        finally:
            if job.poll() is None:
                job.kill()
                job.wait()
    text = log.read_text()
    assert "lost its Ray actor" in text
    assert "restarting the job (attempt 1 of 1) after exit 143" in text
    resumed = re.findall(r"resumed from checkpoint step (\d+)", text)
    assert resumed and int(resumed[0]) >= 4, text[-3000:]
    assert checksum(text) == local_checksum  # nothing lost, nothing replayed
    info = json.loads((run_dir(tmp_path) / "run.json").read_text())
    assert info["attempt"] == 1 and info["job_state"] == "succeeded"
