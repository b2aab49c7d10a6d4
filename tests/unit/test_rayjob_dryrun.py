"""RayJob and Ray launcher dry-runs: snapshots, CRD validity, KubeRay's conventions."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from test_pytorchjob_dryrun import check_snapshot, gpu_spec

from fi_dist import env_vars as ev
from fi_dist.config import spec_from_dict
from fi_dist.k8s.validation import validate
from fi_dist.registry import get_launcher
from fi_dist.spec import DebugSpec, JobSpec


def rayjob(spec: JobSpec) -> dict:
    return get_launcher("rayjob").dryrun(spec).documents[0]


@pytest.mark.parametrize("name", ["rayjob_gpu_debug.yaml", "ray_local_2x2.yaml"])
def test_dry_run_snapshot(name: str, crds_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if name.startswith("rayjob"):
        text = get_launcher("rayjob").dryrun(gpu_spec(nnodes=3, name="ddp-ray")).to_yaml()
        validate(yaml.safe_load(text), crds_dir=crds_dir)
    else:
        spec = JobSpec(script="examples/ddp_train.py", script_args=["--steps", "20"],
                       nnodes=2, nproc_per_node=2, launcher="ray", env={"A": "1"})
        text = get_launcher("ray").dryrun(spec).to_yaml()
    check_snapshot(name, text)


def test_rayjob_contract(crds_dir: Path) -> None:
    job = rayjob(gpu_spec(nnodes=3, name="ddp-ray"))
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head[0]["name"] == "ray-head"  # KubeRay: the Ray container comes first
    ports = {p["name"]: p["containerPort"] for p in head[0]["ports"]}
    assert ports["fi-dist-hub"] == 5678 and 8080 not in ports.values()
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "4"
    assert group["rayStartParams"] == {"num-cpus": "16", "num-gpus": "4"}


def test_rayjob_entrypoint_round_trips_the_spec() -> None:
    spec = gpu_spec(nnodes=3, name="ddp-ray")
    argv = shlex.split(rayjob(spec)["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "fi_dist.launchers.ray"]
    back = spec_from_dict(json.loads(argv[3]), source="entrypoint")
    assert back.launcher == "ray" and back.image is None
    assert (back.nnodes, back.nproc_per_node, back.script_args, back.debug, back.resources,
            back.checkpoint_uri, back.max_restarts) == (
        spec.nnodes, spec.nproc_per_node, spec.script_args, spec.debug, spec.resources,
        spec.checkpoint_uri, spec.max_restarts)


def test_single_node_rayjob_has_no_worker_group(crds_dir: Path) -> None:
    job = rayjob(JobSpec(script="t.py", name="one", image="i", nproc_per_node=2))
    assert "workerGroupSpecs" not in job["spec"]["rayClusterSpec"]
    assert validate(job, crds_dir=crds_dir)


def test_rayjob_name_limit() -> None:
    from fi_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="^name: .* longer than 47"):
        rayjob(JobSpec(script="t.py", name="a" * 50, image="i"))


def test_ray_plan_layout_and_env() -> None:
    from fi_dist.launchers.ray_plan import HEAD_RESOURCE, RankPlan, plan, rank_env

    spec = JobSpec(script="t.py", nnodes=2, nproc_per_node=3, grace_period=12,
                   checkpoint_uri="/ckpt", debug=DebugSpec())
    req = plan(spec)
    assert req.bundles == [{"CPU": 3.0, HEAD_RESOURCE: 0.001}, {"CPU": 3.0}]
    assert [(r.rank, r.node, r.local_rank) for r in req.ranks] == [
        (0, 0, 0), (1, 0, 1), (2, 0, 2), (3, 1, 0), (4, 1, 1), (5, 1, 2)]
    env = {**req.job.replace(attempt=2).to_env(),
           **rank_env(spec, RankPlan(4, 1, 1), ("127.0.0.1", 4000), "127.0.0.1")}
    from fi_dist.runtime.environment import RankEnvironment

    view = RankEnvironment.from_env(env)
    assert (view.rank, view.local_rank, view.node_rank, view.world_size,
            view.local_world_size, view.master_port, view.launcher.value) == (
        4, 1, 1, 6, 3, 4000, "ray")
    assert env[ev.FI_DIST_GRACE_PERIOD] == "12" and env[ev.FI_DIST_CKPT_DIR] == "/ckpt"
    assert env[ev.FI_DIST_ATTEMPT] == "2" and env[ev.GLOO_SOCKET_IFNAME] == "lo"
    gpu = plan(JobSpec(script="t.py", nnodes=1, nproc_per_node=2,
                       resources={"gpus": 2}))
    assert gpu.bundles == [{"GPU": 2.0, HEAD_RESOURCE: 0.001}]
