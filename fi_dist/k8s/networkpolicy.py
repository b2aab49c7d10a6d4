"""A NetworkPolicy that lets only the job's own pods reach its pods (``--network-policy``).

A PyTorchJob's pods listen on the rendezvous port (torch's TCPStore: every interface, no
authentication, the channel resume generations travel on) and, when debugging, on the
hub's rank port. With the policy, ingress to the job's pods is allowed only from pods
carrying the job's ``fi-dist.io/job`` label in the same namespace; everything else is
dropped by the CNI. The job's pods reach each other on *every* port, not only on the
rendezvous and rank ports: gloo and NCCL's socket transport listen on ephemeral ports
whose numbers travel through the store, so a policy narrowed to two ports would cut
the collectives. What it does not cover (docs/debug.md, "Security model"):
``kubectl port-forward`` (apiserver -> kubelet -> the pod's own loopback, which is how
the IDE port and code-server are reached), other containers of the same pod (one
loopback), pods with ``hostNetwork: true`` (most CNIs do not police them), and anyone
who may create pods with the job's label in the namespace.

NetworkPolicy is a built-in type (no CRD to validate against): :func:`check` is a
strict structural check of what :func:`build` emits (unknown fields rejected, values
checked), which a unit test holds against the kubernetes client's ``V1NetworkPolicy``
model; a submit also round-trips it through that model (:mod:`fi_dist.k8s.training`).
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from fi_dist.k8s.rules import LABEL_VALUE
from fi_dist.spec import JobSpec

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
JOB_LABEL = "fi-dist.io/job"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def name(job_name: str) -> str:
    """The policy's name for the job named ``job_name``."""
    return f"{job_name}-fi-dist"


def build(spec: JobSpec, labels: dict[str, str]) -> dict[str, Any]:
    """The policy for ``spec``'s pods (``labels``: the job's labels, ``fi-dist.io/job`` in them)."""
    def job_pods() -> dict[str, Any]:  # a fresh dict each time: no YAML anchors in the output
        return {"matchLabels": {JOB_LABEL: labels[JOB_LABEL]}}

    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name(spec.name), "namespace": spec.namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": job_pods(),
            "policyTypes": ["Ingress"],
            # From the job's own pods only, on any port: the rendezvous and rank ports,
            # and the ephemeral ports of gloo/NCCL (see the module docstring).
            "ingress": [{"from": [{"podSelector": job_pods()}]}],
        },
    }


# --- the strict structural check ---------------------------------------------------------
_STR_MAP = "map[str]str"
_SELECTOR = {"matchLabels": _STR_MAP}
_OWNER = {"apiVersion": str, "kind": str, "name": str, "uid": str, "controller": bool,
          "blockOwnerDeletion": bool}
SHAPE: dict[str, Any] = {
    "apiVersion": str,
    "kind": str,
    "metadata": {"name": str, "namespace": str, "labels": _STR_MAP, "ownerReferences": [_OWNER]},
    "spec": {
        "podSelector": _SELECTOR,
        "policyTypes": [str],
        "ingress": [{"from": [{"podSelector": _SELECTOR}],
                     "ports": [{"protocol": str, "port": int}]}],
    },
}
"""Every field fi-dist may emit, as JSON names (a subset of the model's)."""


def _shape_errors(value: Any, shape: Any, where: str) -> list[str]:
    if shape is _STR_MAP:
        if not isinstance(value, dict):
            return [f"{where}: must be a mapping of strings"]
        return [f"{where}.{k}: must be a string" for k, v in value.items()
                if not isinstance(k, str) or not isinstance(v, str)]
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return [f"{where}: must be a mapping"]
        errors = []
        for key, sub in value.items():
            if key not in shape:
                hint = difflib.get_close_matches(key, list(shape), n=1, cutoff=0.75)
                errors.append(f"{where}.{key}: unknown field".lstrip(".")
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            else:
                errors += _shape_errors(sub, shape[key], f"{where}.{key}")
        return errors
    if isinstance(shape, list):
        if not isinstance(value, list):
            return [f"{where}: must be a list"]
        return [e for i, item in enumerate(value) for e in _shape_errors(item, shape[0],
                                                                         f"{where}[{i}]")]
    if not isinstance(value, shape) or (shape is int and isinstance(value, bool)):
        return [f"{where}: {value!r} is not of type {shape.__name__}"]
    return []


def _selector_errors(sel: Any, where: str) -> list[str]:
    errors = []
    for key, value in (sel or {}).get("matchLabels", {}).items():
        if not _LABEL_KEY.match(key) or len(key.rpartition("/")[2]) > 63:
            errors.append(f"{where}.matchLabels.{key}: not a valid label key")
        if len(value) > 63 or not LABEL_VALUE.match(value):
            errors.append(f"{where}.matchLabels.{key}: {value!r} is not a valid label value")
    return errors


def check(obj: dict[str, Any]) -> list[str]:
    """Every problem with a NetworkPolicy as fi-dist emits it (empty when it passes)."""
    errors = [e.lstrip(".") for e in _shape_errors(obj, SHAPE, "")]
    if errors:
        return errors
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        errors.append(f"apiVersion/kind: expected {API_VERSION} {KIND}, got "
                      f"{obj.get('apiVersion')} {obj.get('kind')}")
    meta = obj.get("metadata", {})
    n = meta.get("name")
    if not isinstance(n, str) or len(n) > 253 or not _DNS_SUBDOMAIN.match(n):
        errors.append(f"metadata.name: {n!r} is not a DNS-1123 subdomain")
    spec = obj.get("spec", {})
    if "podSelector" not in spec:
        errors.append("spec.podSelector: required (an empty selector would select every pod)")
    errors += _selector_errors(spec.get("podSelector"), "spec.podSelector")
    for i, kind in enumerate(spec.get("policyTypes", [])):
        if kind not in ("Ingress", "Egress"):
            errors.append(f"spec.policyTypes[{i}]: {kind!r} is not Ingress or Egress")
    for i, rule in enumerate(spec.get("ingress", [])):
        for j, peer in enumerate(rule.get("from", [])):
            errors += _selector_errors(peer.get("podSelector"),
                                       f"spec.ingress[{i}].from[{j}].podSelector")
        for j, port in enumerate(rule.get("ports", [])):
            if port.get("protocol", "TCP") not in ("TCP", "UDP", "SCTP"):
                errors.append(f"spec.ingress[{i}].ports[{j}].protocol: {port['protocol']!r} "
                              "is not TCP, UDP or SCTP")
            if not 1 <= port.get("port", 1) <= 65535:
                errors.append(f"spec.ingress[{i}].ports[{j}].port: {port['port']} is not a port")
    return errors
