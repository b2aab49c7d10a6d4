"""What the Kubeflow training operator (v1.9) does with a PyTorchJob: pods, names, env.

Used to prove generated manifests without an apiserver: the pod-env test derives
every pod's environment from the manifest with these functions and runs the real
node agents with it. Mirrors the operator's ``setPodEnv`` / master env generator:

* pod ``<job>-master-0`` and ``<job>-worker-<i>``; node rank 0 for the Master,
  ``i + 1`` for Worker ``i``;
* ``MASTER_ADDR`` = ``PET_MASTER_ADDR`` = ``<job>-master-0`` (the Master's Service),
  ``MASTER_PORT`` = ``PET_MASTER_PORT`` = the Master container's ``pytorchjob-port``;
* ``WORLD_SIZE`` = replicas x ``nprocPerNode`` (when an integer), ``RANK`` =
  ``PET_NODE_RANK`` = node rank, ``PET_NNODES`` = replicas, ``PET_NPROC_PER_NODE``
  = ``nprocPerNode``, ``PYTHONUNBUFFERED=0`` (any non-empty value unbuffers);
* the kubelet resolves ``valueFrom`` (``status.podIP``, secret keys).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.k8s.rules import PYTORCH_CONTAINER, PYTORCH_PORT


@dataclass(frozen=True)
class Pod:
    """One pod the operator would create."""

    name: str
    """``<job>-master-0`` or ``<job>-worker-<i>``."""
    replica_type: str
    """``Master`` or ``Worker``."""
    node_rank: int
    """RANK / PET_NODE_RANK the operator assigns."""
    container: dict[str, Any]
    """The ``pytorch`` container from the replica's template."""
    template: dict[str, Any]
    """The replica's pod template."""


def pod_name(job: str, node_rank: int) -> str:
    """The name (and hostname) of node ``node_rank``'s pod: ``<job>-master-0``, ``<job>-worker-K``."""
    return f"{job}-master-0" if node_rank == 0 else f"{job}-worker-{node_rank - 1}"


def pods(job: dict[str, Any]) -> list[Pod]:
    """The pods of ``job`` in node-rank order."""
    name = job["metadata"]["name"]
    out = []
    specs = job["spec"]["pytorchReplicaSpecs"]
    for rtype in ("Master", "Worker"):
        rspec = specs.get(rtype)
        if rspec is None:
            continue
        for i in range(rspec.get("replicas", 1)):
            node = i if rtype == "Master" else i + 1
            template = rspec["template"]
            container = next(c for c in template["spec"]["containers"]
                             if c["name"] == PYTORCH_CONTAINER)
            out.append(Pod(f"{name}-{rtype.lower()}-{i}", rtype, node, container, template))
    return out


def master_port(job: dict[str, Any]) -> int:
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    for c in master:
        if c["name"] == PYTORCH_CONTAINER:
            for p in c.get("ports", []):
                if p["name"] == PYTORCH_PORT:
                    return int(p["containerPort"])
    raise ValueError(f"no {PYTORCH_PORT} on the Master's {PYTORCH_CONTAINER} container")


def pod_env(master_addr: str, master_port: int, nnodes: int, nproc_per_node: int | str,
            node_rank: int) -> dict[str, str]:
    """The variables the operator (v1.9) appends to the containers of node ``node_rank``.

    Since kubeflow/trainer#1840 (v1.8) WORLD_SIZE is pods x nprocPerNode, and the
    operator sets PYTHONUNBUFFERED=0 (CPython reads that as "buffered", so the node
    agent line-buffers its own output). The local launcher gives each of its nodes
    exactly this env, so a local node and a pod cannot drift apart.
    """
    per_node = int(nproc_per_node) if str(nproc_per_node).isdigit() else 1
    port = str(master_port)
    return {
        ev.PYTHONUNBUFFERED: "0",
        ev.MASTER_PORT: port, ev.PET_MASTER_PORT: port,
        ev.MASTER_ADDR: master_addr, ev.PET_MASTER_ADDR: master_addr,
        ev.WORLD_SIZE: str(nnodes * per_node),
        ev.RANK: str(node_rank),
        ev.PET_NPROC_PER_NODE: str(nproc_per_node),
        ev.PET_NODE_RANK: str(node_rank),
        ev.PET_NNODES: str(nnodes),
    }


def operator_env(job: dict[str, Any], node_rank: int) -> dict[str, str]:
    """The variables the operator appends to node ``node_rank``'s containers."""
    specs = job["spec"]["pytorchReplicaSpecs"]
    total = sum(r.get("replicas", 1) for r in specs.values())
    return pod_env(f"{job['metadata']['name']}-master-0", master_port(job), total,
                   job["spec"].get("nprocPerNode", "auto"), node_rank)


def resolve_env(container: dict[str, Any], pod_ip: str,
                secrets: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """The container's own ``env`` as the kubelet resolves it (values, podIP, secrets)."""
    out: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            out[item["name"]] = str(item["value"])
            continue
        src = item.get("valueFrom", {})
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            if path != "status.podIP":
                raise ValueError(f"env {item['name']}: fieldRef {path} is not emulated")
            out[item["name"]] = pod_ip
        elif "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            out[item["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            raise ValueError(f"env {item['name']}: unsupported valueFrom {src}")
    return out


def secrets_from(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Secret name -> stringData, from the documents a dry-run printed."""
    return {d["metadata"]["name"]: dict(d.get("stringData", {}))
            for d in documents if d.get("kind") == "Secret"}


def pod_envs(documents: list[dict[str, Any]],
             pod_ip: Callable[[Pod], str]) -> list[tuple[Pod, dict[str, str]]]:
    """Every pod of the PyTorchJob in ``documents`` with its full container env.

    Args:
        documents: the dry-run's documents (the PyTorchJob and any Secret it uses).
        pod_ip: the address the pod gets (``status.podIP``).
    """
    job = next(d for d in documents if d.get("kind") == "PyTorchJob")
    secret_data = secrets_from(documents)
    out = []
    for pod in pods(job):
        env = resolve_env(pod.container, pod_ip(pod), secret_data)
        env.update(operator_env(job, pod.node_rank))
        out.append((pod, env))
    return out
