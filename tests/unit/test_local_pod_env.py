"""The local launcher's node env is the env the operator derives from a real PyTorchJob."""

from __future__ import annotations

import pytest

from fi_dist import env_vars as ev
from fi_dist.contract import JobContract
from fi_dist.k8s import operator
from fi_dist.launchers.local import LocalLauncher
from fi_dist.launchers.pytorchjob import create_launcher
from fi_dist.spec import JobSpec

EXAMPLE = "examples/ddp_train.py"


@pytest.mark.parametrize(("nnodes", "nproc"), [(1, 1), (2, 2), (3, 4)])
def test_local_node_env_matches_the_operator(nnodes, nproc, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    spec = JobSpec(script=EXAMPLE, nnodes=nnodes, nproc_per_node=nproc,
                   image="example.com/train:1", master_port=0)
    plan = LocalLauncher().dryrun(spec).request
    spec.master_port = plan.master_port
    job = next(d for d in create_launcher().dryrun(spec).documents if d["kind"] == "PyTorchJob")
    for node in range(nnodes):
        pod = operator.operator_env(job, node)
        local = {k: v for k, v in plan.nodes[node].env.items() if k in ev.OPERATOR_POD_VARS}
        assert set(local) == set(ev.OPERATOR_POD_VARS) == set(pod)
        # Same values, except the master's address: a Service name in the cluster,
        # node 0's loopback address here.
        for name in (ev.MASTER_ADDR, ev.PET_MASTER_ADDR):
            assert pod.pop(name) == f"{spec.name}-master-0"
            assert local.pop(name) == "127.0.0.2"
        assert local == pod
        # ... and the job's settings are the same contract, read back the same way.
        pod_job = JobContract.from_env(operator.resolve_env(
            job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0],
            "10.0.0.1", {}))
        assert pod_job.grace_period == plan.job.grace_period


def test_pytorchjob_pods_carry_the_idle_culler_settings():
    from fi_dist.spec import IdleSpec

    spec = JobSpec(script="examples/ddp_train.py", nnodes=2, image="example.com/train:1",
                   idle=IdleSpec(enabled=True, timeout=600, threshold=7))
    job = next(d for d in create_launcher().dryrun(spec).documents if d["kind"] == "PyTorchJob")
    for rtype in ("Master", "Worker"):
        env = {e["name"]: e.get("value") for e in
               job["spec"]["pytorchReplicaSpecs"][rtype]["template"]["spec"]["containers"][0]["env"]}
        assert float(env[ev.FI_DIST_IDLE_TIMEOUT]) == 600.0
        assert float(env[ev.FI_DIST_IDLE_THRESHOLD]) == 7.0
