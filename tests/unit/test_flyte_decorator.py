"""@interactive_pytorch without running a job: options, the switch, stacking on flytekit tasks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fi_dist.integrations.flyte import (
    InteractiveConfig,
    interactive_pytorch,
    reload_function,
    source_file_of,
    source_root_of,
)
from fi_dist.launchjson import write_configuration
from fi_dist.runtime.interactive import resume_launch_config


@pytest.mark.parametrize(("options", "match"), [
    ({"port": 70000}, "port"), ({"debug_port": -1}, "debug_port"),
    ({"max_idle_seconds": 0}, "max_idle_seconds"), ({"ranks": [0, -2]}, "ranks"),
    ({"pre_execute": 3}, "pre_execute"), ({"max_restarts": -1}, "max_restarts"),
])
def test_bad_options_name_the_option(options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        interactive_pytorch(**options)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        interactive_pytorch(prot=8080)


def test_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FI_DIST_INTERACTIVE", raising=False)
    assert not InteractiveConfig().enabled()
    assert InteractiveConfig(enable=True).enabled()
    monkeypatch.setenv("FI_DIST_INTERACTIVE", "0")  # production switch wins over the argument
    assert not InteractiveConfig(enable=True).enabled()
    monkeypatch.setenv("FI_DIST_INTERACTIVE", "1")
    assert InteractiveConfig().enabled()


def test_below_elastic_task_keeps_the_interface() -> None:
    from flytekit import task
    from flytekitplugins.kfpytorch import Elastic

    @task(task_config=Elastic(nnodes=1, nproc_per_node=2, max_restarts=2))
    @interactive_pytorch(enable=True)
    def train(steps: int, lr: float = 0.1) -> str:
        return f"{steps}"

    assert set(train.python_interface.inputs) == {"steps", "lr"}
    assert getattr(train.task_function, "__fi_dist_interactive__", False)
    assert train.task_config.max_restarts == 2  # below @task it cannot (and does not) touch it


def test_above_elastic_task_wraps_it_and_makes_room_for_resumes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flytekit import task
    from flytekitplugins.kfpytorch import Elastic

    monkeypatch.delenv("FI_DIST_INTERACTIVE", raising=False)

    @interactive_pytorch(enable=True, max_restarts=4)
    @task(task_config=Elastic(nnodes=1, nproc_per_node=2))
    def train(steps: int) -> str:
        return f"{steps}"

    assert getattr(train.task_function, "__fi_dist_interactive__", False)
    assert train.task_config.max_restarts == 4

    @interactive_pytorch  # off: the config stays as written
    @task(task_config=Elastic(nnodes=1, nproc_per_node=2))
    def other(steps: int) -> str:
        return f"{steps}"

    assert other.task_config.max_restarts == 0


def test_stacks_on_pytorch_and_ray_task_configs() -> None:
    from flytekit import task
    from flytekitplugins.kfpytorch import PyTorch
    from flytekitplugins.ray import RayJobConfig, WorkerNodeConfig

    @task(task_config=PyTorch(num_workers=2))
    @interactive_pytorch(enable=True)
    def a(x: int) -> int:
        return x

    @task(task_config=RayJobConfig(worker_node_config=[WorkerNodeConfig(group_name="g",
                                                                        replicas=1)]))
    @interactive_pytorch(enable=True)
    def b(x: int) -> int:
        return x

    for t in (a, b):
        assert set(t.python_interface.inputs) == {"x"}
        assert getattr(t.task_function, "__fi_dist_interactive__", False)


def test_decorating_something_else_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="function or a flytekit task"):
        interactive_pytorch(enable=True)(42)


def test_source_root_walks_up_packages(tmp_path: Path) -> None:
    pkg = tmp_path / "proj" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    assert source_root_of(str(pkg / "train.py")) == tmp_path / "proj"
    assert source_root_of(str(tmp_path / "proj" / "wf.py")) == tmp_path / "proj"


def test_reload_function_sees_the_edited_file(tmp_path: Path) -> None:
    mod = tmp_path / "mod_under_edit.py"
    mod.write_text("from fi_dist import interactive_pytorch\n\n@interactive_pytorch\n"
                   "def step(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import mod_under_edit

        fn = mod_under_edit.step.__wrapped__.fn
        file = source_file_of(fn)
        assert file == str(mod.resolve())
        mod.write_text(mod.read_text().replace("x + 1", "x + 100"))
        fresh = reload_function(fn, file)
        assert fn(1) == 2 and fresh(1) == 101
        assert not getattr(fresh, "__fi_dist_interactive__", False)  # unwrapped
        mod.write_text("def step(:\n")
        with pytest.raises(RuntimeError, match="reloading .* after a resume failed"):
            reload_function(fn, file)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mod_under_edit", None)


def test_launch_json_keeps_the_attach_config(tmp_path: Path) -> None:
    vscode = tmp_path / ".vscode"
    vscode.mkdir()
    attach = {"name": "fi-dist: attach all ranks", "type": "debugpy", "request": "attach"}
    (vscode / "launch.json").write_text(json.dumps({"version": "0.2.0",
                                                    "configurations": [attach]}))
    for _ in range(2):  # written again after a restart: replaced, not duplicated
        write_configuration(tmp_path, resume_launch_config("/usr/bin/python3"))
    configs = json.loads((vscode / "launch.json").read_text())["configurations"]
    assert [c["name"] for c in configs] == ["fi-dist: attach all ranks",
                                           "fi-dist: resume all ranks"]
    assert configs[1]["command"] == "/usr/bin/python3 -m fi_dist.cli resume"
