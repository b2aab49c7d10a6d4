"""CRD validation: every configs/ file, and bad objects rejected with the field named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fi_dist.config import load_spec
from fi_dist.errors import ConfigError
from fi_dist.k8s.validation import ManifestError, load_crd, schema_errors, strict, validate
from fi_dist.registry import get_launcher, names
from fi_dist.spec import DebugSpec, JobSpec, ResourceSpec

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.*"))
CLUSTER_KINDS = {"pytorchjob": "PyTorchJob", "rayjob": "RayJob", "trainjob": "TrainJob"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_its_objects_validate(path: Path, crds_dir: Path) -> None:
    spec = load_spec(path)
    assert spec.launcher in names()
    dry = get_launcher(spec.launcher).dryrun(spec)
    assert dry.documents
    kind = CLUSTER_KINDS.get(spec.launcher)
    if kind:
        objs = [d for d in dry.documents if d.get("kind") == kind]
        assert len(objs) == 1
        assert validate(objs[0], crds_dir=crds_dir) is True


def test_configs_cover_every_cluster_launcher() -> None:
    launchers = {load_spec(p).launcher for p in CONFIGS}
    assert set(CLUSTER_KINDS) | {"ray"} <= launchers


def _job() -> dict:
    spec = JobSpec(script="train.py", name="bad-job", image="img:1", nnodes=3, nproc_per_node=2,
                   resources=ResourceSpec(gpus=2), debug=DebugSpec(enabled=True))
    return get_launcher("pytorchjob").dryrun(spec).documents[-1]


def _master(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


def _errors(job: dict, crds_dir: Path) -> str:
    with pytest.raises(ManifestError) as info:
        validate(job, crds_dir=crds_dir)
    return str(info.value)


def test_the_generated_job_is_valid(crds_dir: Path) -> None:
    assert validate(_job(), crds_dir=crds_dir)


def test_typo_field_is_named_with_a_suggestion(crds_dir: Path) -> None:
    job = _job()
    c = _master(job)["template"]["spec"]["containers"][0]
    c["imagePullPolicyy"] = "Always"
    job["spec"]["runPolicy"]["backofLimit"] = 2
    msg = _errors(job, crds_dir)
    assert ("spec.pytorchReplicaSpecs.Master.template.spec.containers[0].imagePullPolicyy: "
            "unknown field (did you mean 'imagePullPolicy'?)") in msg
    assert "spec.runPolicy.backofLimit: unknown field (did you mean 'backoffLimit'?)" in msg


def test_wrong_type_is_named(crds_dir: Path) -> None:
    job = _job()
    _master(job)["replicas"] = "one"
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"][
        "terminationGracePeriodSeconds"] = "60s"
    msg = _errors(job, crds_dir)
    assert "spec.pytorchReplicaSpecs.Master.replicas: 'one' is not of type 'integer'" in msg
    assert ("spec.pytorchReplicaSpecs.Worker.template.spec.terminationGracePeriodSeconds: "
            "'60s' is not of type 'integer'") in msg


def test_two_masters_is_named(crds_dir: Path) -> None:
    job = _job()
    _master(job)["replicas"] = 2
    assert "spec.pytorchReplicaSpecs.Master.replicas: must be 1, got 2" in _errors(job, crds_dir)


def test_missing_master_is_named(crds_dir: Path) -> None:
    job = _job()
    del job["spec"]["pytorchReplicaSpecs"]["Master"]
    assert "spec.pytorchReplicaSpecs.Master: missing" in _errors(job, crds_dir)


def test_container_must_be_named_pytorch(crds_dir: Path) -> None:
    job = _job()
    _master(job)["template"]["spec"]["containers"][0]["name"] = "trainer"
    msg = _errors(job, crds_dir)
    assert "spec.pytorchReplicaSpecs.Master.template.spec.containers: no container named " \
           "'pytorch'" in msg
    assert "no port named 'pytorchjob-port'" in msg


def test_restart_policy_and_replica_type_are_checked(crds_dir: Path) -> None:
    job = _job()
    _master(job)["restartPolicy"] = "OnExitCode"
    job["spec"]["pytorchReplicaSpecs"]["Chief"] = copy.deepcopy(_master(job))
    msg = _errors(job, crds_dir)
    assert "spec.pytorchReplicaSpecs.Master.restartPolicy: 'OnExitCode' is not one of" in msg
    assert "spec.pytorchReplicaSpecs.Chief: unknown replica type" in msg


def test_dns_1035_names(crds_dir: Path) -> None:
    job = _job()
    job["metadata"]["name"] = "9-Bad_Name"
    assert "metadata.name: '9-Bad_Name' is not a DNS-1035 label" in _errors(job, crds_dir)
    with pytest.raises(ConfigError, match="^name must be a DNS-1035 label"):
        JobSpec(script="t.py", name="Bad_Name")


def test_duplicate_env_and_bad_quantity(crds_dir: Path) -> None:
    job = _job()
    c = _master(job)["template"]["spec"]["containers"][0]
    c["env"].append({"name": "FI_DIST_LAUNCHER", "value": "local"})
    c["resources"]["limits"]["memory"] = "lots"
    msg = _errors(job, crds_dir)
    assert "containers[0].env[" in msg and "duplicate entry (name='FI_DIST_LAUNCHER')" in msg
    assert "resources.limits.memory: 'lots' does not match" in msg


def test_bad_spec_from_config_names_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("job:\n  script: t.py\n  launcher: pytorchjob\n  image: i\n"
                   "  resources:\n    gpu: 2\n")
    with pytest.raises(ConfigError, match="unknown key .*resources.'gpu'"):
        load_spec(cfg)


def test_rayjob_rules(crds_dir: Path) -> None:
    spec = JobSpec(script="t.py", name="rj", image="img:1", nnodes=3,
                   debug=DebugSpec(enabled=True))
    job = get_launcher("rayjob").dryrun(spec).documents[0]
    validate(job, crds_dir=crds_dir)
    bad = copy.deepcopy(job)
    bad["spec"]["shutdownAfterJobFinishes"] = False
    group = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["minReplicas"], group["replicas"] = 3, 5
    bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "ports"].append({"name": "hub", "containerPort": 8080})
    bad["spec"]["entrypointt"] = "x"
    msg = _errors(bad, crds_dir)
    assert "spec.shutdownAfterJobFinishes: must be true" in msg
    assert "workerGroupSpecs[0].minReplicas: 3 exceeds maxReplicas 2" in msg
    assert "workerGroupSpecs[0].replicas: 5 is outside" in msg
    assert "'hub' uses 8080, Ray's metrics port" in msg
    assert "spec.entrypointt: unknown field (did you mean 'entrypoint'?)" in msg
    with pytest.raises(ConfigError, match="^debug.port: 8080 is Ray's metrics port"):
        get_launcher("rayjob").dryrun(JobSpec(script="t.py", image="i",
                                              debug=DebugSpec(enabled=True, port=8080)))


def test_trainjob_typo(crds_dir: Path) -> None:
    spec = JobSpec(script="t.py", name="tj", image="img:1", nnodes=2)
    job = get_launcher("trainjob").dryrun(spec).documents[0]
    job["spec"]["trainer"]["numProcsPerNode"] = 2
    assert "spec.trainer.numProcsPerNode: unknown field (did you mean 'numProcPerNode'?)" in \
        _errors(job, crds_dir)


def test_strict_keeps_preserve_unknown_fields_open(crds_dir: Path) -> None:
    schema = {"type": "object", "properties": {
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                 "properties": {"a": {"type": "string"}}},
        "closed": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    assert "additionalProperties" not in strict(schema)["properties"]["open"]
    assert schema_errors({"open": {"b": 1}, "closed": {"b": 1}}, schema) == [
        "closed.b: unknown field"]
    assert load_crd("PyTorchJob", crds_dir)["kind"] == "CustomResourceDefinition"
