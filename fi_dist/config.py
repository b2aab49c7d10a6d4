"""Load a job spec from a TOML or YAML file (``configs/*.toml|yaml``).

Unknown keys are errors that name the key: a typo must not silently run the default.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from fi_dist.errors import ConfigError
from fi_dist.spec import DebugSpec, JobSpec, ResourceSpec

_NESTED = {"debug": DebugSpec, "resources": ResourceSpec}


def _check_keys(cls: type, data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown key {where}{unknown[0]!r}; expected one of: {', '.join(sorted(known))}"
        )


def spec_from_dict(data: dict[str, Any], source: str = "config") -> JobSpec:
    """Build a validated :class:`JobSpec` from plain data.

    Raises:
        ConfigError: unknown keys, missing ``script``, or an invalid value.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data.get("job", data))
    _check_keys(JobSpec, data, f"in {source}: ")
    for key, cls in _NESTED.items():
        if key in data:
            if not isinstance(data[key], dict):
                raise ConfigError(f"{source}: {key} must be a table/mapping, got {data[key]!r}")
            _check_keys(cls, data[key], f"in {source}: {key}.")
            data[key] = cls(**data[key])
    if "script" not in data:
        raise ConfigError(f"{source}: missing required key 'script'")
    try:
        return JobSpec(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_spec(path: str | Path) -> JobSpec:
    """Read a ``.toml``, ``.yaml`` or ``.yml`` job spec."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    else:
        raise ConfigError(f"{path}: config must end in .toml, .yaml or .yml")
    return spec_from_dict(data, source=str(path))
