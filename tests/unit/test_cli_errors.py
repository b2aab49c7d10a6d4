"""Bad CLI input gets a clear error naming what is wrong (the CLI's main, in-process)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from fi_dist import cli

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(workdir: Path, capsys: pytest.CaptureFixture[str]):
    """``fi-dist ARGS`` through ``cli.main`` in ``workdir``; argparse's exits included."""

    def run(*args: str) -> Result:
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def test_nnodes_zero(run_cli):
    r = run_cli("run", "--nnodes", "0", str(EXAMPLES / "ddp_train.py"))
    assert r.returncode == 2
    assert "nnodes must be a positive integer, got 0" in r.stderr


def test_missing_script(run_cli):
    r = run_cli("run", "--nnodes", "2", "no_such_script.py")
    assert r.returncode == 2
    assert "training script not found: no_such_script.py" in r.stderr


def test_no_script(run_cli):
    r = run_cli("run", "--nnodes", "2")
    assert r.returncode == 2 and "no training script given" in r.stderr


def test_master_port_in_use(run_cli):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run_cli("run", "--master-port", str(port), str(EXAMPLES / "ddp_train.py"))
    assert r.returncode == 2
    assert f"master port {port} is already in use" in r.stderr


def test_unknown_launcher(run_cli):
    r = run_cli("run", "--launcher", "slurm", str(EXAMPLES / "ddp_train.py"))
    assert r.returncode == 2
    assert "unknown launcher 'slurm'" in r.stderr and "local" in r.stderr


def test_preempt_without_a_run(run_cli):
    r = run_cli("preempt", "--node", "1")
    assert r.returncode == 2 and "no fi-dist run found" in r.stderr


def test_local_dry_run_prints_each_node_with_pod_env(run_cli):
    import yaml

    r = run_cli("run", "--nnodes", "2", "--nproc-per-node", "3", "--master-port", "0",
                "--dry-run", str(EXAMPLES / "ddp_train.py"), "--", "--steps", "3")
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["addr"] for d in docs] == ["127.0.0.2", "127.0.0.3"]
    env1 = docs[1]["env"]
    assert env1["RANK"] == "1" and env1["WORLD_SIZE"] == "6" and env1["PET_NPROC_PER_NODE"] == "3"
    assert env1["MASTER_ADDR"] == env1["PET_MASTER_ADDR"] == "127.0.0.2"
    assert docs[0]["argv"][-2:] == ["--steps", "3"]


def test_missing_program_and_bad_module(run_cli):
    r = run_cli("run", "--no-python", "no-such-program-xyz", "--", "a")
    assert r.returncode == 2
    assert "program not found: no-such-program-xyz" in r.stderr
    r = run_cli("run", "-m", "not a module")
    assert r.returncode == 2 and "is not a dotted module name" in r.stderr


def test_module_and_program_targets_reach_rank_main_and_pods(run_cli):
    """-m / --no-python go to every rank's rank_main (torchrun's flags) or, with
    --pod-entrypoint, make each pod's own command line."""
    import yaml

    r = run_cli("run", "--nnodes", "2", "--master-port", "0", "--dry-run", "-m", "pkg.train",
                "--", "--steps", "3")
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert docs[0]["argv"][1:] == ["-m", "fi_dist.runtime.node_agent", "--module", "pkg.train",
                                   "--steps", "3"]
    r = run_cli("run", "--nnodes", "2", "--master-port", "0", "--dry-run", "--pod-entrypoint",
                "--no-python", "sh", "--", "-c", "echo $RANK")
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["argv"] for d in docs] == [["sh", "-c", "echo $RANK"]] * 2
    env1 = docs[1]["env"]  # exactly the operator's pod env (plus gloo on loopback)
    assert (env1["RANK"], env1["WORLD_SIZE"], env1["PET_NODE_RANK"]) == ("1", "2", "1")
    assert env1["GLOO_SOCKET_IFNAME"] == "lo"


def test_bad_debug_trace(run_cli):
    r = run_cli("run", "--debug-trace", "always", str(EXAMPLES / "ddp_train.py"))
    assert r.returncode == 2 and "--debug-trace" in r.stderr and "'lazy'" in r.stderr
