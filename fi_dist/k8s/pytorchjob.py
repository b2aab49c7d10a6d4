"""Build a Kubeflow PyTorchJob (kubeflow.org/v1) from a :class:`~fi_dist.spec.JobSpec`.

Plain dicts, not kubeflow-training's models: the dicts are what is validated against
the CRD, printed by ``--dry-run`` and sent through the kubernetes client's
CustomObjectsApi, so there is one representation and no pin on ``kubernetes<36``
from kubeflow-training.

Every pod runs the node agent (``python -m fi_dist.runtime.node_agent SCRIPT ...``),
which reads the operator's PET_* variables like torchrun. One Master + (nnodes-1)
Workers, ``restartPolicy: ExitCode`` (exit 143 after a SIGTERM is retried, a bug's
exit 1 is not), the hub port declared on the Master container so the Master's
headless Service exposes it.
"""

from __future__ import annotations

import math
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.contract import JobContract, LauncherKind, node_agent_command
from fi_dist.errors import ConfigError
from fi_dist.k8s.rules import PYTORCH_CONTAINER, PYTORCH_PORT
from fi_dist.spec import JobSpec

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
HUB_PORT_NAME = "fi-dist-hub"
HUB_RANKS_PORT_NAME = "fi-dist-ranks"
CODE_SERVER_PORT_NAME = "code-server"
CODE_SERVER_PORT = 13337
"""Where code-server listens in the Master pod when debugging (declared, not started here)."""
CKPT_MOUNT = "/fi-dist/ckpt"
TOKEN_KEY = "token"


def labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "fi-dist", "app.kubernetes.io/managed-by": "fi-dist",
            "fi-dist.io/job": spec.name}


def debug_secret_name(spec: JobSpec) -> str:
    return f"{spec.name}-fi-dist-debug"[:63]


def require_cluster_fields(spec: JobSpec, launcher: str) -> None:
    """Fields a cluster launcher needs that the local one does not."""
    if not spec.image:
        raise ConfigError(f"image: the {launcher} launcher needs a container image "
                          "(--image or `image` in the config)")
    if spec.master_port == 0:
        raise ConfigError("master_port: 0 (pick a free port) only works with the local "
                          "launcher; give a fixed port")
    if spec.resources.gpus and spec.nproc_per_node > spec.resources.gpus:
        raise ConfigError(f"nproc_per_node: {spec.nproc_per_node} ranks per node but "
                          f"resources.gpus={spec.resources.gpus}: one GPU per rank")


def checkpoint_volume(uri: str | None
                      ) -> tuple[str | None, dict[str, Any] | None, dict[str, Any] | None]:
    """(FI_DIST_CKPT_DIR value, volume, volumeMount) for ``pvc://CLAIM[/SUB]`` or a URI."""
    if not uri:
        return None, None, None
    if not uri.startswith("pvc://"):
        return uri, None, None  # s3://, gs://, a path on the image: passed through
    claim, _, sub = uri[len("pvc://"):].partition("/")
    if not claim:
        raise ConfigError(f"checkpoint_uri: {uri!r} names no claim (pvc://CLAIM[/SUBPATH])")
    volume = {"name": "fi-dist-ckpt", "persistentVolumeClaim": {"claimName": claim}}
    mount = {"name": "fi-dist-ckpt", "mountPath": CKPT_MOUNT}
    return (f"{CKPT_MOUNT}/{sub}".rstrip("/"), volume, mount)


def job_contract(spec: JobSpec, launcher: LauncherKind = LauncherKind.PYTORCHJOB,
                 token: str | None = None) -> JobContract:
    """The job's contract as its pods get it (checkpoint dir inside the pod, whole seconds)."""
    ckpt_dir, _, _ = checkpoint_volume(spec.checkpoint_uri)
    job = JobContract.from_spec(spec, launcher, run_id=spec.name, token=token,
                                checkpoint_dir=ckpt_dir)
    return job.replace(grace_period=float(grace_seconds(spec)))


def container_env(job: JobContract, secret_name: str) -> list[dict[str, Any]]:
    """Every pod's env: the contract, with the token from the job's Secret and the pod IP
    from the downward API (the operator adds MASTER_*/PET_* itself)."""
    env: list[dict[str, Any]] = []
    for name, value in sorted(job.to_env().items()):
        if name == ev.FI_DIST_DEBUG_TOKEN:
            env.append({"name": name, "valueFrom": {"secretKeyRef": {
                "name": secret_name, "key": TOKEN_KEY}}})
        else:
            env.append({"name": name, "value": value})
    env.append({"name": ev.FI_DIST_NODE_ADDR,
                "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return env


def grace_seconds(spec: JobSpec) -> int:
    return max(1, math.ceil(spec.grace_period))


def resources(spec: JobSpec) -> dict[str, dict[str, Any]]:
    # Quantities as strings, the form the apiserver returns them in: the typed models
    # (kubernetes client, kubeflow-training) hold them as str, so an int would come back
    # changed from the model round trip the PyTorchJob submit checks (fi_dist/k8s/training.py).
    r = spec.resources
    amounts: dict[str, str] = {}
    if r.cpu:
        amounts["cpu"] = str(r.cpu)
    if r.memory:
        amounts["memory"] = str(r.memory)
    if r.gpus:
        amounts["nvidia.com/gpu"] = str(r.gpus)
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _pod_template(spec: JobSpec, job: JobContract, master: bool) -> dict[str, Any]:
    ports = [{"name": PYTORCH_PORT, "containerPort": spec.master_port, "protocol": "TCP"}]
    if master and job.debug is not None:
        # The IDE-facing hub port, the port ranks of other pods dial, and code-server's.
        ports += [{"name": HUB_PORT_NAME, "containerPort": job.debug.ide_port,
                   "protocol": "TCP"},
                  {"name": HUB_RANKS_PORT_NAME, "containerPort": job.debug.hub_rank_port,
                   "protocol": "TCP"},
                  {"name": CODE_SERVER_PORT_NAME, "containerPort": CODE_SERVER_PORT,
                   "protocol": "TCP"}]
    _, volume, mount = checkpoint_volume(spec.checkpoint_uri)
    # torch DataLoader workers and NCCL need more /dev/shm than a container's 64 MiB.
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if volume and mount:
        volumes.append(volume)
        mounts.append(mount)
    container: dict[str, Any] = {
        "name": PYTORCH_CONTAINER,
        "image": spec.image,
        "command": node_agent_command(spec.script, spec.script_args, python="python",
                                      module=spec.module, no_python=spec.no_python),
        "env": container_env(job, debug_secret_name(spec)),
        "ports": ports,
        "volumeMounts": mounts,
    }
    if res := resources(spec):
        container["resources"] = res
    return {
        "metadata": {"labels": {**labels(spec),
                                "fi-dist.io/role": "master" if master else "worker"}},
        "spec": {"containers": [container], "volumes": volumes,
                 "terminationGracePeriodSeconds": grace_seconds(spec)},
    }


def build(spec: JobSpec, job: JobContract | None = None) -> dict[str, Any]:
    """The PyTorchJob object for ``spec`` (not validated; see fi_dist.k8s.validation)."""
    require_cluster_fields(spec, "pytorchjob")
    job = job or job_contract(spec)
    replica_specs: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": "ExitCode",
                   "template": _pod_template(spec, job, master=True)},
    }
    if spec.nnodes > 1:
        replica_specs["Worker"] = {"replicas": spec.nnodes - 1, "restartPolicy": "ExitCode",
                                   "template": _pod_template(spec, job, master=False)}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec)},
        "spec": {
            "nprocPerNode": str(spec.nproc_per_node),
            "runPolicy": {"backoffLimit": spec.max_restarts},
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def debug_secret(spec: JobSpec, token: str) -> dict[str, Any]:
    """The Secret holding the hub token every rank and the IDE side present.

    Created before the job (a pod whose env names a missing Secret key does not start),
    then given the job as its owner (:func:`owner_reference`), so it goes with the job.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": debug_secret_name(spec), "namespace": spec.namespace,
                     "labels": labels(spec)},
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token},
    }


def owner_reference(job: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to a created PyTorchJob (``job`` as the API returned it, with
    its uid): the garbage collector deletes the owned object with the job."""
    meta = job["metadata"]
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "uid": meta["uid"]}


def documents(spec: JobSpec, token: str | None = None) -> list[dict[str, Any]]:
    """What ``--dry-run`` prints and ``schedule`` creates, in creation order.

    The NetworkPolicy (``network_policy``) first, so no pod of the job is ever
    reachable without it; the token Secret before the job, whose pods read it.
    """
    from fi_dist.k8s import networkpolicy

    job = job_contract(spec, token=token)
    docs = [networkpolicy.build(spec, labels(spec))] if spec.network_policy else []
    if job.debug is not None:
        docs.append(debug_secret(spec, job.debug.token))
    return [*docs, build(spec, job)]
