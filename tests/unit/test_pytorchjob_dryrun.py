"""PyTorchJob / TrainJob dry-runs: pinned snapshots, CRD-valid, the manifest's contract.

Snapshots live in tests/unit/snapshots/; regenerate them after an intended change with
``FI_DIST_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_pytorchjob_dryrun.py
tests/unit/test_rayjob_dryrun.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fi_dist import env_vars as ev
from fi_dist.k8s import operator
from fi_dist.k8s.validation import validate
from fi_dist.launcher import JobState
from fi_dist.registry import get_launcher
from fi_dist.spec import DebugSpec, JobSpec, ResourceSpec

SNAPSHOTS = Path(__file__).parent / "snapshots"
REPO = Path(__file__).resolve().parents[2]
TOKEN_PLACEHOLDER = "<token>"


def gpu_spec(**kw) -> JobSpec:
    base = dict(script="examples/ddp_train.py", script_args=["--steps", "2000"], name="ddp-gpu",
                nnodes=3, nproc_per_node=4, image="ghcr.io/example/fi-dist-train:0.1.0",
                max_restarts=3, grace_period=60, checkpoint_uri="pvc://train-ckpts/ddp-gpu",
                env={"NCCL_DEBUG": "WARN"},
                resources=ResourceSpec(cpu="16", memory="64Gi", gpus=4),
                debug=DebugSpec(enabled=True, post_mortem_wait=600))
    base.update(kw)
    return JobSpec(**base)


def normalized_yaml(launcher: str, spec: JobSpec) -> str:
    """The dry-run's YAML with the random hub token replaced by a placeholder."""
    dry = get_launcher(launcher).dryrun(spec)
    for doc in dry.documents:
        if doc.get("kind") == "Secret":
            doc["stringData"]["token"] = TOKEN_PLACEHOLDER
    return dry.to_yaml()


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("FI_DIST_UPDATE_SNAPSHOTS") == "1":
        path.write_text(text)
    if not path.exists():
        pytest.fail(f"snapshot {path} is missing (create it with FI_DIST_UPDATE_SNAPSHOTS=1)")
    assert text == path.read_text(), f"dry-run output differs from {path}"


CASES = {
    "pytorchjob_gpu_debug.yaml": ("pytorchjob", lambda: gpu_spec()),
    "pytorchjob_cpu_single.yaml": ("pytorchjob", lambda: JobSpec(
        script="train.py", name="tiny", image="img:1", nnodes=1, nproc_per_node=2,
        checkpoint_uri="s3://bucket/ckpt")),
    "trainjob_gpu.yaml": ("trainjob", lambda: gpu_spec(nnodes=2, debug=DebugSpec())),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_snapshot(name: str, crds_dir: Path) -> None:
    launcher, make = CASES[name]
    text = normalized_yaml(launcher, make())
    check_snapshot(name, text)
    for doc in yaml.safe_load_all(text):
        if doc["kind"] != "Secret":
            assert validate(doc, crds_dir=crds_dir) is True


def test_manifest_contract() -> None:
    """What the operator and the in-pod runtime rely on, read from the object."""
    spec = gpu_spec()
    secret, job = get_launcher("pytorchjob").dryrun(spec).documents
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    assert {r["restartPolicy"] for r in replicas.values()} == {"ExitCode"}
    assert job["spec"]["runPolicy"]["backoffLimit"] == 3
    assert job["spec"]["nprocPerNode"] == "4"
    pods = operator.pods(job)
    assert [p.name for p in pods] == ["ddp-gpu-master-0", "ddp-gpu-worker-0", "ddp-gpu-worker-1"]
    for pod in pods:
        c = pod.container
        assert c["name"] == "pytorch"
        assert c["command"][:3] == ["python", "-m", "fi_dist.runtime.node_agent"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert pod.template["spec"]["terminationGracePeriodSeconds"] == 60
        env = {e["name"]: e for e in c["env"]}
        assert env[ev.FI_DIST_LAUNCHER]["value"] == "pytorchjob"
        assert env[ev.FI_DIST_NODE_ADDR]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env[ev.FI_DIST_GRACE_PERIOD]["value"] == "60"
        assert env[ev.FI_DIST_CKPT_DIR]["value"] == "/fi-dist/ckpt/ddp-gpu"
        assert env[ev.FI_DIST_DEBUG_TOKEN]["valueFrom"]["secretKeyRef"]["name"] == \
            secret["metadata"]["name"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if pod.replica_type == "Master":  # the headless Service exposes what is declared
            assert ports == {"pytorchjob-port": 29500, "fi-dist-hub": 5678,
                             "fi-dist-ranks": 5679, "code-server": 13337}
        else:
            assert ports == {"pytorchjob-port": 29500}
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert mounts["fi-dist-ckpt"] == "/fi-dist/ckpt"
    assert job["metadata"]["labels"]["fi-dist.io/job"] == "ddp-gpu"


def test_debug_off_has_no_secret_and_no_hub_port() -> None:
    docs = get_launcher("pytorchjob").dryrun(gpu_spec(debug=DebugSpec())).documents
    assert [d["kind"] for d in docs] == ["PyTorchJob"]
    master = docs[0]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert [p["name"] for p in master["containers"][0]["ports"]] == ["pytorchjob-port"]
    assert not any(e["name"].startswith("FI_DIST_DEBUG") for e in master["containers"][0]["env"])


@pytest.mark.parametrize(("conditions", "state"), [
    ([], JobState.PENDING),
    ([{"type": "Created", "status": "True"}], JobState.PENDING),
    ([{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}],
     JobState.RUNNING),
    ([{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}],
     JobState.SUCCEEDED),
    ([{"type": "Running", "status": "True"}, {"type": "Failed", "status": "True",
                                              "message": "exit 1"}], JobState.FAILED),
])
def test_status_from_operator_conditions(conditions: list, state: JobState) -> None:
    from fi_dist.launchers.pytorchjob import job_state

    assert job_state({"status": {"conditions": conditions}})[0] is state


def test_attach_config_written_to_launch_json(tmp_path: Path) -> None:
    from fi_dist.launchjson import ATTACH_CONFIG_NAME, attach_config, write_configuration

    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    path.write_text('{"version": "0.2.0", "configurations": [{"name": "mine"}]}')
    write_configuration(tmp_path, attach_config("127.0.0.1", 40001, "tok"))
    write_configuration(tmp_path, attach_config("127.0.0.1", 40002, "tok"))
    data = yaml.safe_load(path.read_text())
    names = [c["name"] for c in data["configurations"]]
    assert names == ["mine", ATTACH_CONFIG_NAME]
    assert data["configurations"][1]["connect"] == {"host": "127.0.0.1", "port": 40002}
    assert data["configurations"][1]["fiDistToken"] == "tok"


def test_missing_image_is_named() -> None:
    from fi_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="^image: the pytorchjob launcher needs"):
        get_launcher("pytorchjob").dryrun(JobSpec(script="t.py"))
    with pytest.raises(ConfigError, match="^nproc_per_node: 8 ranks per node but resources.gpus=4"):
        get_launcher("pytorchjob").dryrun(gpu_spec(nproc_per_node=8))
