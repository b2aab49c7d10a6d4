"""PyTorchJob / TrainJob dry-runs: pinned snapshots, CRD-valid, the manifest's contract.

Snapshots live in tests/unit/snapshots/; regenerate them after an intended change with
``FI_DIST_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_pytorchjob_dryrun.py
tests/unit/test_rayjob_dryrun.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from fi_dist import env_vars as ev
from fi_dist.k8s import networkpolicy, operator
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
    "pytorchjob_network_policy.yaml": ("pytorchjob", lambda: JobSpec(
        script="train.py", name="guarded", image="img:1", nnodes=2, nproc_per_node=2,
        launcher="pytorchjob", network_policy=True, debug=DebugSpec(enabled=True))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_snapshot(name: str, crds_dir: Path) -> None:
    launcher, make = CASES[name]
    text = normalized_yaml(launcher, make())
    check_snapshot(name, text)
    for doc in yaml.safe_load_all(text):
        if doc["kind"] == "NetworkPolicy":
            assert networkpolicy.check(doc) == []
            assert v1_round_trip(doc) == doc
        elif doc["kind"] != "Secret":
            assert validate(doc, crds_dir=crds_dir) is True


def v1_round_trip(doc: dict) -> dict:
    """``doc`` through the kubernetes client's typed model and back to what it would send
    (a field the model does not know is dropped, a wrong type changes or fails)."""
    from kubernetes import client

    api = client.ApiClient()

    class Response:
        data = json.dumps(doc)

    return api.sanitize_for_serialization(api.deserialize(Response(), "V1NetworkPolicy"))


def _model_fields(model: str) -> dict[str, str]:
    """JSON field name -> type name of a kubernetes client model."""
    from kubernetes import client

    cls = getattr(client, model)
    return {cls.attribute_map[a]: t for a, t in cls.openapi_types.items()}


def _shape_in_model(shape: object, model: str, where: str) -> list[str]:
    """Fields of ``networkpolicy.SHAPE`` that the model lacks (or types it disagrees on)."""
    import re

    if model.startswith("list["):
        inner = re.match(r"list\[(.*)\]", model).group(1)
        return _shape_in_model(shape[0], inner, where + "[]") if isinstance(shape, list) else [
            f"{where}: a list in the model"]
    if model.startswith("dict("):
        return [] if shape == networkpolicy._STR_MAP else [f"{where}: a map in the model"]
    if isinstance(shape, dict):
        if not model.startswith("V1"):
            return [f"{where}: {model} in the model, an object here"]
        fields = _model_fields(model)
        return [e for k, sub in shape.items() for e in (
            _shape_in_model(sub, fields[k], f"{where}.{k}") if k in fields
            else [f"{where}.{k}: not a field of {model}"])]
    # IntOrString ports are `object` in the model; scalars must agree otherwise.
    ok = {str: ("str",), int: ("int", "object"), bool: ("bool",)}[shape]  # type: ignore[index]
    return [] if model in ok else [f"{where}: {model} in the model"]


def test_network_policy_check_is_a_subset_of_the_v1_model() -> None:
    """Every field the structural check allows exists, with that type, in V1NetworkPolicy."""
    assert _shape_in_model(networkpolicy.SHAPE, "V1NetworkPolicy", "") == []


def test_network_policy_contract() -> None:
    spec = CASES["pytorchjob_network_policy.yaml"][1]()
    policy, secret, job = get_launcher("pytorchjob").dryrun(spec).documents
    assert [policy["kind"], secret["kind"], job["kind"]] == ["NetworkPolicy", "Secret",
                                                            "PyTorchJob"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": selector}}]}]
    # The policy selects every pod of the job, and only the job's pods are its peers.
    for pod in operator.pods(job):
        assert selector.items() <= pod.template["metadata"]["labels"].items()
    assert policy["metadata"]["namespace"] == job["metadata"]["namespace"]


@pytest.mark.parametrize(("path", "value", "message"), [
    (("spec", "podSelectr"), {}, "spec.podSelectr: unknown field (did you mean 'podSelector'?)"),
    (("spec", "policyTypes"), ["Sideways"], "spec.policyTypes[0]: 'Sideways' is not Ingress"),
    (("spec", "ingress"), [{"ports": [{"port": 70000}]}], "spec.ingress[0].ports[0].port: 70000"),
    (("spec", "ingress"), [{"ports": [{"port": "80"}]}], "'80' is not of type int"),
    (("metadata", "name"), "Bad_Name", "metadata.name: 'Bad_Name' is not a DNS-1123"),
])
def test_network_policy_check_names_the_field(path: tuple, value: object, message: str) -> None:
    spec = CASES["pytorchjob_network_policy.yaml"][1]()
    policy = get_launcher("pytorchjob").dryrun(spec).documents[0]
    policy[path[0]][path[1]] = value
    assert any(message in e for e in networkpolicy.check(policy)), networkpolicy.check(policy)


def test_network_policy_needs_the_pytorchjob_launcher(
        capsys: pytest.CaptureFixture[str]) -> None:
    from fi_dist.cli import main
    from fi_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="network_policy: only the pytorchjob launcher"):
        JobSpec(script="t.py", network_policy=True)
    assert main(["run", "--network-policy", "--dry-run", "examples/ddp_train.py"]) == 2
    assert "network_policy: only the pytorchjob launcher" in capsys.readouterr().err
    assert main(["run", "--launcher", "pytorchjob", "--image", "i:1", "--network-policy",
                 "--dry-run", "examples/ddp_train.py"]) == 0
    assert "kind: NetworkPolicy" in capsys.readouterr().out


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
