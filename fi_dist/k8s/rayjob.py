"""Build a KubeRay RayJob (ray.io/v1) that runs a :class:`~fi_dist.spec.JobSpec` on Ray.

The job-owned RayCluster has one head and ``nnodes - 1`` workers, all sized like a
node of the spec. The entrypoint is fi-dist's own Ray launcher
(``python -m fi_dist.launchers.ray SPEC_JSON``), which places one actor per rank and
pins rank 0 to the head, so the hub port declared on the head container is where the
hub listens. KubeRay takes the first container of a pod as the Ray container, and
port 8080 is Ray's metrics port: the hub never uses it.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.errors import ConfigError
from fi_dist.k8s.pytorchjob import (
    HUB_PORT_NAME,
    checkpoint_volume,
    grace_seconds,
    labels,
    require_cluster_fields,
    resources,
)
from fi_dist.k8s.rules import RAY_METRICS_PORT
from fi_dist.spec import JobSpec

API_VERSION = "ray.io/v1"
KIND = "RayJob"
RAY_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
MAX_NAME = 47  # KubeRay derives longer names (cluster, pods) from it


def _changed(value: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, v in value.items():
        d = default.get(key)
        if isinstance(v, dict) and isinstance(d, dict):
            if sub := _changed(v, d):
                out[key] = sub
        elif v != d:
            out[key] = v
    return out


def entrypoint(spec: JobSpec) -> str:
    """The command KubeRay's submitter runs against the new cluster.

    Carries only the fields that differ from the defaults, so the command stays short
    and readable in ``kubectl get rayjob -o yaml``.
    """
    data = _changed(spec.to_dict(), JobSpec(script=spec.script).to_dict())
    data.update(script=spec.script, launcher="ray")
    data.pop("image", None)  # the cluster already runs it
    return shlex.join(["python", "-m", "fi_dist.launchers.ray",
                       json.dumps(data, sort_keys=True, separators=(",", ":"))])


def _container(spec: JobSpec, name: str, head: bool) -> dict[str, Any]:
    ports = [{"name": n, "containerPort": p} for n, p in RAY_PORTS.items()] if head else []
    if head and spec.debug.enabled:
        ports.append({"name": HUB_PORT_NAME, "containerPort": spec.debug.port})
    _, _, mount = checkpoint_volume(spec.checkpoint_uri)
    c: dict[str, Any] = {
        "name": name,
        "image": spec.image,
        "env": [{"name": ev.FI_DIST_NODE_ADDR,
                 "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}] + ([mount] if mount else []),
    }
    if ports:
        c["ports"] = ports
    if res := resources(spec):
        c["resources"] = res
    return c


def _template(spec: JobSpec, name: str, head: bool) -> dict[str, Any]:
    _, volume, _ = checkpoint_volume(spec.checkpoint_uri)
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}] + ([volume] if volume else [])
    return {"metadata": {"labels": labels(spec)},
            "spec": {"containers": [_container(spec, name, head)], "volumes": volumes,
                     "terminationGracePeriodSeconds": grace_seconds(spec)}}


def _start_params(spec: JobSpec) -> dict[str, str]:
    # One Ray node per spec node, advertising exactly the slots its ranks need.
    params = {"num-cpus": spec.resources.cpu or str(spec.nproc_per_node)}
    if spec.resources.gpus:
        params["num-gpus"] = str(spec.resources.gpus)
    return params


def build(spec: JobSpec) -> dict[str, Any]:
    """The RayJob object for ``spec`` (not validated; see fi_dist.k8s.validation)."""
    require_cluster_fields(spec, "rayjob")
    if len(spec.name) > MAX_NAME:
        raise ConfigError(f"name: {spec.name!r} is longer than {MAX_NAME} characters "
                          "(KubeRay derives cluster and pod names from it)")
    if spec.debug.enabled and spec.debug.port == RAY_METRICS_PORT:
        raise ConfigError(f"debug.port: {RAY_METRICS_PORT} is Ray's metrics port on the head; "
                          "pick another hub port")
    cluster: dict[str, Any] = {
        "headGroupSpec": {"rayStartParams": _start_params(spec),
                          "template": _template(spec, "ray-head", head=True)},
    }
    workers = spec.nnodes - 1
    if workers:
        cluster["workerGroupSpecs"] = [{
            "groupName": "ranks", "replicas": workers, "minReplicas": workers,
            "maxReplicas": workers, "rayStartParams": _start_params(spec),
            "template": _template(spec, "ray-worker", head=False),
        }]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels(spec)},
        "spec": {
            "entrypoint": entrypoint(spec),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": spec.max_restarts,
            "rayClusterSpec": cluster,
        },
    }
