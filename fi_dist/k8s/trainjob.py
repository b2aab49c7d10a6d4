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

from fi_dist import env_vars as ev
from fi_dist.k8s.pytorchjob import container_env, labels, require_cluster_fields, resources
from fi_dist.spec import JobSpec

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
DEFAULT_RUNTIME = "torch-distributed"


def build(spec: JobSpec, runtime: str = DEFAULT_RUNTIME) -> dict[str, Any]:
    require_cluster_fields(spec, "trainjob")
    env = [e for e in container_env(spec, launcher="pytorchjob")
           if e["name"] != ev.FI_DIST_DEBUG_TOKEN]  # no Secret in the v2 dry-run yet
    trainer: dict[str, Any] = {
        "image": spec.image,
        "command": ["python", "-m", "fi_dist.runtime.rank_main", spec.script,
                    *spec.script_args],
        "numNodes": spec.nnodes,
        "numProcPerNode": spec.nproc_per_node,
        "env": env,
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
