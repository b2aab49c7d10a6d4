"""The cluster commands as a user types them: real `fi-dist` processes, no cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from fi_dist.k8s.validation import validate

REPO = Path(__file__).resolve().parents[2]


def test_cli_dry_run_prints_the_same_documents(crds_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fi_dist.cli", "run", "--dry-run", "--launcher", "pytorchjob",
         "--image", "img:1", "--name", "cli-job", "--nnodes", "2", "--nproc-per-node", "2",
         "--debug", "examples/ddp_train.py", "--", "--steps", "5"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n---\n") == 1
    secret, job = yaml.safe_load_all(out.stdout)
    assert secret["kind"] == "Secret" and len(secret["stringData"]["token"]) >= 32
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "cli-job"
    validate(job, crds_dir=crds_dir)
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert master["command"][-3:] == ["examples/ddp_train.py", "--steps", "5"]


def test_cluster_commands_without_kubeconfig_say_so(tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    commands = (["run", "--launcher", "pytorchjob", "--image", "img:1", "examples/ddp_train.py"],
                ["status", "some-job", "--launcher", "pytorchjob"],
                ["logs", "some-job", "--launcher", "pytorchjob"],
                ["cancel", "some-job", "--launcher", "pytorchjob"],
                ["attach", "some-job", "--launcher", "pytorchjob"])
    running = [(args, subprocess.Popen([sys.executable, "-m", "fi_dist.cli", *args], cwd=REPO,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)) for args in commands]
    for args, p in running:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 2, (args, stdout, stderr)
        assert "no Kubernetes cluster configured" in stderr, (args, stderr)
        assert "Traceback" not in stderr
