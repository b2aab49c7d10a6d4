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
    ({"max_idle_seconds": -5}, "max_idle_seconds=-5"),
    ({"max_idle_seconds": "1h"}, "max_idle_seconds='1h'"),
    ({"idle": {"interval": -1}}, "idle.interval must be a number of seconds > 0, got -1"),
    ({"idle": {"interval": 0}}, "idle.interval must be a number of seconds > 0, got 0"),
    ({"idle": {"warn_lead": -2}}, "idle.warn_lead must be a number >= 0"),
    ({"idle": {"timeout": 60}}, "the window is max_idle_seconds"),
    ({"idle": {"intervall": 1}}, "intervall"),
    ({"idle": 5}, "must be a mapping of idle options"),
    ({"bind_address": ""}, "bind_address"),
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


def test_idle_options_make_the_culler_settings() -> None:
    cfg = InteractiveConfig(max_idle_seconds=600, idle={"interval": 5, "webhook":
                                                         "http://127.0.0.1:9/h"})
    spec = cfg.idle_spec
    assert (spec.enabled, spec.timeout, spec.interval, spec.webhook) == (
        True, 600.0, 5, "http://127.0.0.1:9/h")
    assert InteractiveConfig().idle_spec.timeout == 36000.0  # @vscode's 10 hours


def _template_config(task) -> dict:
    from collections import OrderedDict

    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.tools.translator import get_serializable

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image())
    return dict(get_serializable(OrderedDict(), settings, task).template.config)


def test_flyte_console_links_to_rank_0s_code_server() -> None:
    """The link @vscode gets (flytekit merges get_extra_config into the task template),
    below and above @task; none for a port picked at run time."""
    from flytekit import task
    from flytekitplugins.kfpytorch import PyTorch

    @task(task_config=PyTorch(num_workers=2))
    @interactive_pytorch(port=8080)
    def below(x: int) -> int:
        return x

    @interactive_pytorch(port=8081)
    @task(task_config=PyTorch(num_workers=2))
    def above(x: int) -> int:
        return x

    @task
    @interactive_pytorch(port=0)
    def free_port(x: int) -> int:
        return x

    assert _template_config(below)["link_type"] == "vscode"
    assert _template_config(below)["port"] == "8080"
    assert _template_config(above)["port"] == "8081"
    assert "link_type" not in _template_config(free_port)
    assert below(x=3) == 3 and above(x=4) == 4  # off: the function, unchanged


def test_the_task_function_pickles_for_spawned_workers() -> None:
    import cloudpickle
    from flytekit import task

    @task
    @interactive_pytorch(enable=False)
    def f(x: int) -> int:
        return x + 1

    again = cloudpickle.loads(cloudpickle.dumps(f.task_function))
    assert type(again) is type(f.task_function) and again(x=1) == 2
    assert again.get_extra_config() == {"link_type": "vscode", "port": "8080"}


def test_above_pytorch_task_makes_room_for_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Enabled above a PyTorch task: each resume restarts the pods, so they restart on
    failure (in place) up to max_restarts times; what the task set stays."""
    from flytekit import task
    from flytekitplugins.kfpytorch import PyTorch
    from flytekitplugins.kfpytorch.task import Master, RestartPolicy, RunPolicy

    monkeypatch.delenv("FI_DIST_INTERACTIVE", raising=False)

    @interactive_pytorch(enable=True, max_restarts=5)
    @task(task_config=PyTorch(num_workers=2))
    def train(steps: int) -> str:
        return f"{steps}"

    config = train.task_config
    assert config.master.restart_policy is RestartPolicy.FAILURE
    assert config.worker.restart_policy is RestartPolicy.FAILURE
    assert config.run_policy.backoff_limit == 5

    @interactive_pytorch(enable=True)
    @task(task_config=PyTorch(num_workers=2, master=Master(restart_policy=RestartPolicy.NEVER),
                              run_policy=RunPolicy(backoff_limit=1)))
    def kept(steps: int) -> str:
        return f"{steps}"

    assert kept.task_config.master.restart_policy is RestartPolicy.NEVER
    assert kept.task_config.run_policy.backoff_limit == 1

    @interactive_pytorch  # off: the config stays as written
    @task(task_config=PyTorch(num_workers=2))
    def off(steps: int) -> str:
        return f"{steps}"

    assert off.task_config.worker.restart_policy is None and off.task_config.run_policy is None
