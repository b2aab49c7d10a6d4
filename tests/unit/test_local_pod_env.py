"""The local launcher's node env is the env the operator derives from a real PyTorchJob."""

from __future__ import annotations

import pytest

from fi_dist import env_vars as ev
from fi_dist.k8s import operator
from fi_dist.launchers.local import operator_env
from fi_dist.launchers.pytorchjob import create_launcher
from fi_dist.spec import JobSpec


@pytest.mark.parametrize(("nnodes", "nproc"), [(1, 1), (2, 2), (3, 4)])
def test_local_node_env_matches_the_operator(nnodes, nproc):
    spec = JobSpec(script="examples/ddp_train.py", nnodes=nnodes, nproc_per_node=nproc,
                   image="example.com/train:1", master_port=23456)
    job = next(d for d in create_launcher().dryrun(spec).documents if d["kind"] == "PyTorchJob")
    for node in range(nnodes):
        pod = operator.operator_env(job, node)
        local = operator_env(spec, node, master_addr="127.0.0.2", master_port=23456)
        assert set(local) == set(ev.OPERATOR_POD_VARS) == set(pod)
        # Same values, except the master's address: a Service name in the cluster,
        # node 0's loopback address here.
        for name in (ev.MASTER_ADDR, ev.PET_MASTER_ADDR):
            assert pod.pop(name) == f"{spec.name}-master-0"
            assert local.pop(name) == "127.0.0.2"
        assert local == pod


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
