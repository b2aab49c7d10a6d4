"""Rules the operators enforce that their CRD schemas do not encode.

Each check returns messages that name the field, like the schema errors, so one
validation report lists everything wrong with an object.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RESTART_POLICIES = ("Always", "OnFailure", "Never", "ExitCode")
PYTORCH_CONTAINER = "pytorch"
PYTORCH_PORT = "pytorchjob-port"
RAY_METRICS_PORT = 8080


def _name_errors(meta: Any, max_len: int = 63) -> list[str]:
    if not isinstance(meta, dict):
        return ["metadata: must be a mapping"]
    errors = []
    name = meta.get("name")
    if not isinstance(name, str) or len(name) > max_len or not DNS_1035.match(name):
        errors.append(f"metadata.name: {name!r} is not a DNS-1035 label (lower-case letters, "
                      f"digits and '-', starting with a letter, at most {max_len} characters)")
    ns = meta.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not DNS_1123_LABEL.match(ns)):
        errors.append(f"metadata.namespace: {ns!r} is not a DNS-1123 label")
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(f"metadata.labels.{key}: {value!r} is not a valid label value")
    return errors


def _ports_errors(container: dict[str, Any], where: str) -> list[str]:
    errors = []
    for i, port in enumerate(container.get("ports") or []):
        name = port.get("name")
        if name is not None and (len(name) > 15 or not PORT_NAME.match(name)
                                 or not re.search("[a-z]", name)):
            errors.append(f"{where}.ports[{i}].name: {name!r} is not an IANA service name "
                          "(at most 15 lower-case letters, digits and '-')")
    return errors


def _pytorchjob(obj: dict[str, Any]) -> list[str]:
    # The training operator's webhook: exactly one Master, a container named
    # "pytorch" in every replica, known restart policies; names become Service names.
    errors = _name_errors(obj.get("metadata"))
    replicas = (obj.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    if not isinstance(replicas, dict):
        return errors
    for rtype in replicas:
        if rtype not in ("Master", "Worker"):
            errors.append(f"spec.pytorchReplicaSpecs.{rtype}: unknown replica type "
                          "(expected Master or Worker)")
    master = replicas.get("Master")
    if master is None:
        errors.append("spec.pytorchReplicaSpecs.Master: missing (exactly one Master replica "
                      "is required)")
    elif master.get("replicas", 1) != 1:
        errors.append(f"spec.pytorchReplicaSpecs.Master.replicas: must be 1, got "
                      f"{master.get('replicas')!r}")
    for rtype, rspec in replicas.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if not isinstance(rspec, dict):
            continue
        policy = rspec.get("restartPolicy")
        if policy is not None and policy not in RESTART_POLICIES:
            errors.append(f"{where}.restartPolicy: {policy!r} is not one of "
                          f"{', '.join(RESTART_POLICIES)}")
        containers = ((rspec.get("template") or {}).get("spec") or {}).get("containers") or []
        names = [c.get("name") for c in containers if isinstance(c, dict)]
        if PYTORCH_CONTAINER not in names:
            errors.append(f"{where}.template.spec.containers: no container named "
                          f"{PYTORCH_CONTAINER!r} (found {names})")
        for i, c in enumerate(containers):
            if isinstance(c, dict):
                errors.extend(_ports_errors(c, f"{where}.template.spec.containers[{i}]"))
    if master is not None:
        containers = ((master.get("template") or {}).get("spec") or {}).get("containers") or []
        ports = [p.get("name") for c in containers if c.get("name") == PYTORCH_CONTAINER
                 for p in c.get("ports") or []]
        if PYTORCH_PORT not in ports:
            errors.append("spec.pytorchReplicaSpecs.Master.template.spec.containers[pytorch]"
                          f".ports: no port named {PYTORCH_PORT!r} (the operator reads "
                          "MASTER_PORT from it)")
    return errors


def _ray_cluster(spec: Any, where: str) -> list[str]:
    # KubeRay takes the *first* container of each pod as the Ray container.
    errors: list[str] = []
    if not isinstance(spec, dict):
        return errors
    head = (spec.get("headGroupSpec") or {}).get("template", {}).get("spec", {})
    containers = head.get("containers") or []
    if containers:
        for p in containers[0].get("ports") or []:
            if p.get("containerPort") == RAY_METRICS_PORT and p.get("name") != "metrics":
                errors.append(f"{where}.headGroupSpec.template.spec.containers[0].ports: "
                              f"{p.get('name')!r} uses {RAY_METRICS_PORT}, Ray's metrics port")
        errors.extend(_ports_errors(containers[0], f"{where}.headGroupSpec.template.spec"
                                                   ".containers[0]"))
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        gw = f"{where}.workerGroupSpecs[{i}]"
        lo, hi, n = group.get("minReplicas", 0), group.get("maxReplicas"), group.get("replicas")
        if hi is not None and lo is not None and lo > hi:
            errors.append(f"{gw}.minReplicas: {lo} exceeds maxReplicas {hi}")
        if n is not None and hi is not None and not (lo or 0) <= n <= hi:
            errors.append(f"{gw}.replicas: {n} is outside minReplicas..maxReplicas "
                          f"({lo}..{hi})")
    return errors


def _rayjob(obj: dict[str, Any]) -> list[str]:
    errors = _name_errors(obj.get("metadata"), max_len=47)  # KubeRay appends suffixes
    spec = obj.get("spec") or {}
    if not spec.get("entrypoint"):
        errors.append("spec.entrypoint: required (the command the Ray job runs)")
    if spec.get("shutdownAfterJobFinishes") is not True and "clusterSelector" not in spec:
        errors.append("spec.shutdownAfterJobFinishes: must be true for a job-owned cluster "
                      "(else the RayCluster outlives the job and holds its GPUs)")
    errors.extend(_ray_cluster(spec.get("rayClusterSpec"), "spec.rayClusterSpec"))
    return errors


def _trainjob(obj: dict[str, Any]) -> list[str]:
    errors = _name_errors(obj.get("metadata"))
    trainer = (obj.get("spec") or {}).get("trainer") or {}
    n = trainer.get("numNodes")
    if n is not None and n < 1:
        errors.append(f"spec.trainer.numNodes: must be >= 1, got {n}")
    return errors


CHECKS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "PyTorchJob": _pytorchjob,
    "RayJob": _rayjob,
    "TrainJob": _trainjob,
}


def check(obj: dict[str, Any]) -> list[str]:
    """Every operator-rule violation in ``obj`` (empty when it passes)."""
    fn = CHECKS.get(obj.get("kind", ""))
    return fn(obj) if fn else []
