"""Build a Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1).

The TrainJob names a runtime (``ClusterTrainingRuntime`` ``torch-distributed`` by
default) and overrides its trainer: image, command, nodes, processes per node,
resources, env. The runtime's JobSet starts torchrun itself, so the command here is
the rank entry point (``python -m fi_dist.runtime.rank_main``) under the runtime's
torchrun: fi-dist's per-rank hooks run, the node agent does not.

Dry-run and validation only: submitting goes through the same CustomObjectsApi path
as the PyTorchJob but is not offered until it can be tried on a Trainer v2 cluster.
"""

from __future__ import annotations

from typing import Any

from fi_dist.contract import JobContract, rank_command
from fi_dist.k8s.pytorchjob import (
    container_env,
    debug_secret,
    debug_secret_name,
    job_contract,
    labels,
    require_cluster_fields,
    resources,
)
from fi_dist.spec import JobSpec

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
DEFAULT_RUNTIME = "torch-distributed"


def build(spec: JobSpec, runtime: str = DEFAULT_RUNTIME, job: JobContract | None = None
          ) -> dict[str, Any]:
    require_cluster_fields(spec, "trainjob")
    # The runtime's torchrun starts the ranks in a pod of the operator's making: the
    # same contract as a PyTorchJob's pods, token from the job's Secret.
    job = job or job_contract(spec)
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": rank_command(spec.script, spec.script_args, python="python",
                                module=spec.module, no_python=spec.no_python),
        "numNodes": spec.nnodes,
        "numProcPerNode": spec.nproc_per_node,
        "env": container_env(job, debug_secret_name(spec)),
    }
    if res := resources(spec):
        trainer["resourcesPerNode"] = res
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec)},
        "spec": {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org",
                                "kind": "ClusterTrainingRuntime"},
                 "trainer": trainer},
    }


def documents(spec: JobSpec, runtime: str = DEFAULT_RUNTIME) -> list[dict[str, Any]]:
    """The TrainJob, after the Secret with the job token when debugging."""
    job = job_contract(spec)
    docs = [debug_secret(spec, job.debug.token)] if job.debug is not None else []
    return [*docs, build(spec, runtime, job)]
