"""The fi-dist VSCode extension as shipped: manifest, settings through the contract, flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fi_dist import editor
from fi_dist import env_vars as ev
from fi_dist.cli import build_parser, spec_from_args
from fi_dist.contract import DebugSettings, JobContract, LauncherKind
from fi_dist.errors import ConfigError
from fi_dist.launchjson import DEBUG_TYPE
from fi_dist.runtime.debug.ide import CAPABILITIES, DEBUG_TYPES
from fi_dist.spec import DebugSpec, JobSpec


def manifest() -> dict:
    return json.loads((editor.extension_dir() / "package.json").read_text())


def test_manifest_contributes_the_debug_type_the_configs_use() -> None:
    m = manifest()
    assert f"{m['publisher']}.{m['name']}" == editor.EXTENSION_ID
    assert editor.version() == m["version"]
    (debugger,) = m["contributes"]["debuggers"]
    assert debugger["type"] == DEBUG_TYPE and DEBUG_TYPE in DEBUG_TYPES
    assert {"connect", "fiDistToken"} <= set(debugger["configurationAttributes"]["attach"][
        "properties"])
    # Breakpoints in Python files need a contribution when no Python extension is there.
    assert {"language": "python"} in m["contributes"]["breakpoints"]
    views = m["contributes"]["views"]["debug"]
    assert [v["id"] for v in views] == ["fiDist.ranks"] and views[0]["name"] == "Ranks"
    commands = {c["command"] for c in m["contributes"]["commands"]}
    assert {"fiDist.breakAll", "fiDist.continueAll", "fiDist.focusRank",
            "fiDist.resumeEdited"} <= commands
    # The exception filters VSCode offers come from the hub; uncaught is on by default.
    assert any(f["filter"] == "uncaught" and f["default"]
               for f in CAPABILITIES["exceptionBreakpointFilters"])
    source = (editor.extension_dir() / "extension.js").read_text()
    assert "DebugAdapterServer" in source and "'fiDist/ranks'" in source
    assert "require(" in source and "require('vscode')" in source
    # Plain JavaScript on the vscode API: nothing to fetch at run time.
    required = {line.split("require(")[1].split(")")[0] for line in source.splitlines()
                if "require(" in line}
    assert required <= {"'vscode'", "'fs'", "'path'"}


def test_missing_vsix_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(editor, "__file__", str(tmp_path / "__init__.py"))
    with pytest.raises(editor.MissingVsixError, match="make setup"):
        editor.vsix_path()


def test_code_server_settings_round_trip_through_the_contract(tmp_path: Path) -> None:
    vsix = tmp_path / "other.vsix"
    vsix.write_bytes(b"PK")
    spec = JobSpec(script="t.py", debug=DebugSpec(enabled=True, code_server=True,
                                                  code_server_port=0, extensions=[str(vsix)]))
    job = JobContract.from_spec(spec, LauncherKind.LOCAL, run_id="r")
    assert job.debug is not None and job.debug.extensions == (str(vsix),)
    env = job.to_env()
    assert env[ev.FI_DIST_CODE_SERVER_START] == "1" and env[ev.FI_DIST_VSIX] == str(vsix)
    assert JobContract.from_env(env) == job
    plain = DebugSettings(token="x")
    assert ev.FI_DIST_CODE_SERVER_START not in plain.to_env()
    assert DebugSettings.from_env(plain.to_env()) == plain


@pytest.mark.parametrize("bad", ["x.vsix", "README.md", "one.vsix,two.vsix"])
def test_extensions_must_be_vsix_files(bad: str, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(ConfigError, match="debug.extensions"):
        DebugSpec(enabled=True, extensions=[str(tmp_path / bad)])
    with pytest.raises(ConfigError, match="list of .vsix"):
        DebugSpec(enabled=True, extensions="x.vsix")  # type: ignore[arg-type]


def test_flags_extension_implies_code_server_and_debug(tmp_path: Path) -> None:
    vsix = tmp_path / "x.vsix"
    vsix.write_bytes(b"PK")
    args = build_parser().parse_args(["run", "--extension", str(vsix), "t.py"])
    spec = spec_from_args(args)
    assert spec.debug.enabled and spec.debug.code_server
    assert spec.debug.extensions == [str(vsix)]
    spec = spec_from_args(build_parser().parse_args(["run", "--code-server", "t.py"]))
    assert spec.debug.enabled and spec.debug.code_server and spec.debug.code_server_port == 8080
    spec = spec_from_args(build_parser().parse_args(["run", "--debug", "t.py"]))
    assert not spec.debug.code_server


def test_interactive_extensions_are_checked(tmp_path: Path) -> None:
    from fi_dist.integrations.flyte import InteractiveConfig

    vsix = tmp_path / "x.vsix"
    vsix.write_bytes(b"PK")
    assert InteractiveConfig(extensions=[str(vsix)]).extensions == (str(vsix.resolve()),)
    with pytest.raises(ValueError, match="no-such.vsix"):
        InteractiveConfig(extensions=[str(tmp_path / "no-such.vsix")])
    with pytest.raises(ValueError, match="list of .vsix"):
        InteractiveConfig(extensions=str(vsix))


def test_one_notice_names_every_blocked_rank() -> None:
    from fi_dist.runtime.debug.jobview import blocked_note

    same = "blocked in collective all_reduce at train.py:40"
    assert blocked_note({0: ("rank 0 (node 0)", same)}).startswith(
        f"fi-dist: rank 0 (node 0) is {same}, waiting for a stopped rank")
    assert blocked_note({1: ("rank 1 (node 0)", same), 0: ("rank 0 (node 0)", same),
                         2: ("rank 2 (node 1)", same)}).startswith(
        f"fi-dist: rank 0 (node 0), rank 1 (node 0) and rank 2 (node 1) are {same},")
    mixed = blocked_note({0: ("rank 0 (node 0)", same),
                          1: ("rank 1 (node 0)", "blocked in native code at x.py:3")})
    assert mixed.startswith(f"fi-dist: rank 0 (node 0) is {same}; rank 1 (node 0) is "
                            "blocked in native code at x.py:3,")


def test_code_server_is_refused_on_ray_where_no_node_agent_runs(tmp_path: Path) -> None:
    from fi_dist.registry import get_launcher

    script = tmp_path / "t.py"
    script.write_text("pass\n")
    spec = JobSpec(script=str(script), debug=DebugSpec(enabled=True, code_server=True))
    with pytest.raises(ConfigError, match="--code-server needs node agents"):
        get_launcher("ray").dryrun(spec)
