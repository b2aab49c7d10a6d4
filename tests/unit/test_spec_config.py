"""JobSpec validation and config files: errors name the field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fi_dist.config import load_spec, spec_from_dict
from fi_dist.errors import ConfigError
from fi_dist.spec import JobSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"nnodes": 0}, "nnodes must be a positive integer, got 0"),
        ({"nproc_per_node": -1}, "nproc_per_node must be a positive integer, got -1"),
        ({"master_port": 70000}, "master_port must be an integer port"),
        ({"name": "My_Job"}, "name must be a DNS-1035 label"),
        ({"max_restarts": -2}, "max_restarts must be an integer >= 0, got -2"),
        ({"grace_period": -1}, "grace_period must be a number >= 0"),
        ({"debug": {"port": -5}}, "debug.port must be an integer port"),
        ({"resources": {"gpus": -1}}, "resources.gpus must be an integer >= 0"),
        ({"module": True, "no_python": True}, "module and no_python cannot be used together"),
        ({"module": "yes"}, "module must be true or false, got 'yes'"),
        ({"pod_entrypoint": True, "launcher": "ray"}, "pod_entrypoint: only the local launcher"),
        ({"pod_entrypoint": True, "debug": {"enabled": True}},
         "pod_entrypoint: no node agent starts a debug hub"),
    ],
)
def test_spec_errors_name_field_and_value(kwargs, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        JobSpec(script="train.py", **kwargs)


def test_module_target_must_be_a_dotted_name():
    assert JobSpec(script="pkg.sub.train", module=True).module
    with pytest.raises(ConfigError, match="module: 'train.py/x' is not a dotted module name"):
        JobSpec(script="train.py/x", module=True)


def test_spec_defaults_and_world_size():
    spec = JobSpec(script="train.py", nnodes=3, nproc_per_node=4)
    assert spec.world_size == 12 and spec.launcher == "local" and not spec.debug.enabled


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key in cfg: 'nnode'"):
        spec_from_dict({"script": "t.py", "nnode": 2}, source="cfg")
    with pytest.raises(ConfigError, match=r"unknown key in cfg: debug\.'prot'"):
        spec_from_dict({"script": "t.py", "debug": {"prot": 1}}, source="cfg")


def test_missing_script_is_named():
    with pytest.raises(ConfigError, match="missing required key 'script'"):
        spec_from_dict({"nnodes": 2}, source="cfg")


def test_yaml_and_toml_agree(tmp_path: Path):
    (tmp_path / "a.toml").write_text('[job]\nscript = "t.py"\nnnodes = 2\n[job.debug]\nenabled = true\n')
    (tmp_path / "a.yaml").write_text("job:\n  script: t.py\n  nnodes: 2\n  debug:\n    enabled: true\n")
    assert load_spec(tmp_path / "a.toml") == load_spec(tmp_path / "a.yaml")


def test_bad_files(tmp_path: Path):
    (tmp_path / "bad.toml").write_text("[job\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_spec(tmp_path / "bad.toml")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in \.toml, \.yaml or \.yml"):
        load_spec(tmp_path / "x.json")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_spec(tmp_path / "missing.toml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_toml_configs_load(path: Path):
    spec = load_spec(path)
    assert (REPO / spec.script).is_file(), f"{path.name} names a missing script {spec.script}"
