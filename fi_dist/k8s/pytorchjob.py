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
import secrets
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.errors import ConfigError
from fi_dist.k8s.rules import PYTORCH_CONTAINER, PYTORCH_PORT
from fi_dist.runtime.idle.config import idle_env
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


def checkpoint_volume(uri: str | None) -> tuple[str | None, dict | None, dict | None]:
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


def container_env(spec: JobSpec, launcher: str = "pytorchjob") -> list[dict[str, Any]]:
    """The fi-dist part of every pod's env (the operator adds MASTER_*/PET_* itself)."""
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    env += [
        {"name": ev.FI_DIST_LAUNCHER, "value": launcher},
        {"name": ev.FI_DIST_RUN_ID, "value": spec.name},
        {"name": ev.FI_DIST_NODE_ADDR,
         "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": ev.FI_DIST_GRACE_PERIOD, "value": str(grace_seconds(spec))},
    ]
    ckpt_dir, _, _ = checkpoint_volume(spec.checkpoint_uri)
    if ckpt_dir:
        env.append({"name": ev.FI_DIST_CKPT_DIR, "value": ckpt_dir})
    # Each pod's node agent runs its own idle culler from these.
    env += [{"name": k, "value": v} for k, v in sorted(idle_env(spec.idle).items())]
    if spec.debug.enabled:
        d = spec.debug
        env += [
            {"name": ev.FI_DIST_DEBUG, "value": "1"},
            {"name": ev.FI_DIST_DEBUG_PORT, "value": str(d.port)},
            {"name": ev.FI_DIST_DEBUG_HOST, "value": d.host},
            {"name": ev.FI_DIST_DEBUG_TOKEN, "valueFrom": {"secretKeyRef": {
                "name": debug_secret_name(spec), "key": TOKEN_KEY}}},
            {"name": ev.FI_DIST_WAIT_FOR_CLIENT, "value": "1" if d.wait_for_client else "0"},
            {"name": ev.FI_DIST_POST_MORTEM_WAIT, "value": f"{d.post_mortem_wait:g}"},
            {"name": ev.FI_DIST_DEBUG_TRACE, "value": d.trace},
        ]
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


def _pod_template(spec: JobSpec, master: bool) -> dict[str, Any]:
    ports = [{"name": PYTORCH_PORT, "containerPort": spec.master_port, "protocol": "TCP"}]
    if master and spec.debug.enabled:
        # The IDE-facing hub port, the port ranks of other pods dial (hub port + 1,
        # see fi_dist.runtime.debug.agent.hub_address) and code-server's.
        ports += [{"name": HUB_PORT_NAME, "containerPort": spec.debug.port, "protocol": "TCP"},
                  {"name": HUB_RANKS_PORT_NAME, "containerPort": spec.debug.port + 1,
                   "protocol": "TCP"},
                  {"name": CODE_SERVER_PORT_NAME, "containerPort": CODE_SERVER_PORT,
                   "protocol": "TCP"}]
    _, volume, mount = checkpoint_volume(spec.checkpoint_uri)
    # torch DataLoader workers and NCCL need more /dev/shm than a container's 64 MiB.
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if volume:
        volumes.append(volume)
        mounts.append(mount)
    container: dict[str, Any] = {
        "name": PYTORCH_CONTAINER,
        "image": spec.image,
        "command": ["python", "-m", "fi_dist.runtime.node_agent", spec.script,
                    *spec.script_args],
        "env": container_env(spec),
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


def build(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob object for ``spec`` (not validated; see fi_dist.k8s.validation)."""
    require_cluster_fields(spec, "pytorchjob")
    replica_specs: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": "ExitCode",
                   "template": _pod_template(spec, master=True)},
    }
    if spec.nnodes > 1:
        replica_specs["Worker"] = {"replicas": spec.nnodes - 1, "restartPolicy": "ExitCode",
                                   "template": _pod_template(spec, master=False)}
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


def debug_secret(spec: JobSpec, token: str | None = None) -> dict[str, Any]:
    """The Secret holding the hub token every rank and the IDE side present."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": debug_secret_name(spec), "namespace": spec.namespace,
                     "labels": labels(spec)},
        "type": "Opaque",
        "stringData": {TOKEN_KEY: token or secrets.token_urlsafe(32)},
    }


def documents(spec: JobSpec, token: str | None = None) -> list[dict[str, Any]]:
    """What ``--dry-run`` prints and ``schedule`` creates, in creation order."""
    docs = [debug_secret(spec, token)] if spec.debug.enabled else []
    return [*docs, build(spec)]
