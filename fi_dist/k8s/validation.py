"""Validate generated custom objects against the operators' real CRD schemas.

Two layers, both run before anything is submitted and in the tests:

1. the CRD's ``openAPIV3Schema`` (jsonschema), made *strict*: every object schema that
   lists ``properties`` rejects unknown fields unless it says
   ``x-kubernetes-preserve-unknown-fields`` (the apiserver prunes unknown fields
   silently; a typo must fail here instead), and ``x-kubernetes-list-map-keys`` lists
   must not repeat a key (two env vars or ports with one name);
2. the rules the schemas lack but the operators' webhooks enforce (container named
   ``pytorch``, exactly one Master, DNS-1035 names, restart policies, Ray container
   first), in :mod:`fi_dist.k8s.rules`.

Errors name the field as a path: ``spec.pytorchReplicaSpecs.Master.replicas: ...``.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.errors import ConfigError

log = logging.getLogger("fi_dist.k8s")

CRDS_DIR_ENV = ev.FI_DIST_CRDS_DIR
"""Directory of CRD YAML files to validate against (client-side setting, not a job var)."""

# kind -> CRD file name in ../shared/crds (or FI_DIST_CRDS_DIR).
CRD_FILES: dict[str, str] = {
    "PyTorchJob": "kubeflow.org_pytorchjobs.v1.9.4.yaml",
    "RayJob": "ray.io_rayjobs.v1.7.0.yaml",
    "RayCluster": "ray.io_rayclusters.v1.7.0.yaml",
    "TrainJob": "trainer.kubeflow.org_trainjobs.v2.3.0.yaml",
}


class ManifestError(ConfigError):
    """A generated object breaks its CRD schema or an operator rule; names the field."""


def default_crds_dir() -> Path | None:
    """``$FI_DIST_CRDS_DIR``, else ``shared/crds`` beside the checkout, else None."""
    if os.environ.get(CRDS_DIR_ENV):
        return Path(os.environ[CRDS_DIR_ENV])
    beside = Path(__file__).resolve().parents[3] / "shared" / "crds"
    return beside if beside.is_dir() else None


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in a CustomResourceDefinition."""
    for v in crd.get("spec", {}).get("versions", []):
        if v.get("name") == version:
            if not v.get("served", False):
                raise ManifestError(f"CRD {crd['metadata']['name']} does not serve {version}")
            return v["schema"]["openAPIV3Schema"]
    raise ManifestError(f"CRD {crd.get('metadata', {}).get('name')} has no version {version!r}")


@functools.lru_cache(maxsize=16)
def _load_crd(path: str) -> dict[str, Any]:
    import yaml

    # CRDs are large (up to 1.4 MB): libyaml's loader is ~10x faster when available.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as fh:
        return yaml.load(fh, Loader=loader)


def load_crd(kind: str, crds_dir: Path | None = None) -> dict[str, Any]:
    """The CRD for ``kind`` from ``crds_dir`` (default: :func:`default_crds_dir`).

    Raises:
        ManifestError: no directory, or the kind's file is missing from it.
    """
    crds_dir = crds_dir or default_crds_dir()
    if crds_dir is None:
        raise ManifestError(f"no CRD schemas to validate {kind} against: set {CRDS_DIR_ENV} "
                            "to a directory holding the operator CRDs")
    path = Path(crds_dir) / CRD_FILES[kind]
    if not path.is_file():
        raise ManifestError(f"CRD for {kind} not found at {path}")
    return _load_crd(str(path))


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` whose objects reject fields they do not declare."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _list_map_duplicates(obj: Any, schema: dict[str, Any], where: list) -> Iterator[str]:
    """Repeated keys in ``x-kubernetes-list-type: map`` lists (the apiserver rejects them)."""
    if isinstance(obj, dict) and "properties" in schema:
        for key, value in obj.items():
            sub = schema["properties"].get(key)
            if sub is not None:
                yield from _list_map_duplicates(value, sub, [*where, key])
    elif isinstance(obj, dict) and isinstance(schema.get("additionalProperties"), dict):
        for key, value in obj.items():
            yield from _list_map_duplicates(value, schema["additionalProperties"], [*where, key])
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        keys = schema.get("x-kubernetes-list-map-keys")
        seen: set[tuple] = set()
        for i, item in enumerate(obj):
            if keys and isinstance(item, dict):
                ident = tuple(item.get(k) for k in keys)
                if ident in seen:
                    shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, ident, strict=True))
                    yield f"{_path([*where, i])}: duplicate entry ({shown})"
                seen.add(ident)
            yield from _list_map_duplicates(item, schema["items"], [*where, i])


def schema_errors(obj: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` (made strict) by ``obj``, each naming its field."""
    from jsonschema import Draft7Validator

    validator = Draft7Validator(strict(schema))
    errors = []
    for err in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path))):
        if err.validator == "additionalProperties" and err.validator_value is False:
            known = sorted(err.schema.get("properties", {}))
            extra = sorted(set(err.instance) - set(known))
            for name in extra:
                hint = _close(name, known)
                errors.append(f"{_path([*err.path, name])}: unknown field"
                              + (f" (did you mean {hint!r}?)" if hint else ""))
        else:
            errors.append(f"{_path(err.path)}: {err.message}")
    errors.extend(_list_map_duplicates(obj, schema, []))
    return errors


def _close(name: str, known: list[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return match[0] if match else None


def validate(obj: dict[str, Any], crds_dir: Path | None = None,
             crd: dict[str, Any] | None = None, require_schema: bool = True) -> bool:
    """Check ``obj`` against its CRD schema and the operator's own rules.

    Args:
        obj: a custom object (apiVersion/kind/metadata/spec) as plain data.
        crds_dir: where the CRD files are (default :func:`default_crds_dir`).
        crd: the CRD itself (e.g. read from the cluster); overrides ``crds_dir``.
        require_schema: when False and no CRD is at hand, check the operator rules
            only (a dry-run on a machine without the CRD files) instead of failing.

    Returns:
        True when the schema was checked too, False when only the rules were.

    Raises:
        ManifestError: listing every violation, each naming its field.
    """
    from fi_dist.k8s import rules

    kind = obj.get("kind")
    if kind not in CRD_FILES:
        raise ManifestError(f"kind: no CRD known for {kind!r}; known: {', '.join(CRD_FILES)}")
    version = str(obj.get("apiVersion", "")).rpartition("/")[2]
    errors: list[str] = []
    if crd is None and not require_schema and (crds_dir or default_crds_dir()) is None:
        log.warning("%s: no CRD files (set %s); checked the operator rules only", kind,
                    CRDS_DIR_ENV)
    else:
        crd = crd if crd is not None else load_crd(kind, crds_dir)
        errors = schema_errors(obj, crd_schema(crd, version))
    errors.extend(rules.check(obj))
    if errors:
        name = obj.get("metadata", {}).get("name", "?")
        raise ManifestError(f"{kind} {name!r} is invalid:\n  " + "\n  ".join(errors))
    return crd is not None
