"""The one launch.json writer (fi_dist/launchjson.py): the user's JSONC stays byte for byte."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fi_dist import launchjson
from fi_dist.launchjson import (
    ATTACH_CONFIG_NAME,
    LaunchJsonError,
    attach_config,
    upsert,
    write_configuration,
)
from fi_dist.rundir import RunDir
from fi_dist.runtime.debug import launchjson as hub_launchjson

USER_FILE = """\
{
    // Use IntelliSense to learn about possible attributes.
    // Hover to view descriptions of existing attributes.
    "version": "0.2.0",
    "configurations": [
        {
            "name": "Python: current file", // the one I use
            "type": "debugpy",
            "request": "launch",
            "program": "${file}",
            "args": ["--steps", "3",],
        },
        /* spare:
        { "name": "old" }, */
    ],
}
"""
USER_HEAD, USER_TAIL = USER_FILE.split("        /* spare:")
USER_TAIL = "        /* spare:" + USER_TAIL


def mine(port: int = 5678, token: str = "tok") -> dict:
    return attach_config("127.0.0.1", port, token)


def jsonc_configs(text: str) -> list[dict]:
    import json5

    return json5.loads(text)["configurations"]


def write_user_file(folder: Path, text: str, mode: int = 0o644) -> Path:
    path = folder / ".vscode" / "launch.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_comments_trailing_commas_and_user_config_survive_add_and_replace(tmp_path: Path) -> None:
    path = write_user_file(tmp_path, USER_FILE)
    write_configuration(tmp_path, mine(5678, "tok1"))
    first = path.read_text()
    # Everything of the user's is still there, byte for byte: ours sits between the last
    # configuration and the comment after it, as VSCode's jsonc-parser would put it.
    assert first.startswith(USER_HEAD.rstrip(",\n") + ",\n")
    assert first.endswith(",\n" + USER_TAIL)
    configs = jsonc_configs(first)
    assert [c["name"] for c in configs] == ["Python: current file", ATTACH_CONFIG_NAME]
    assert configs[1] == mine(5678, "tok1")

    write_configuration(tmp_path, mine(6000, "tok2"))  # a second run: replaced in place
    second = path.read_text()
    assert second.startswith(USER_HEAD.rstrip(",\n") + ",\n")
    assert second.endswith(",\n" + USER_TAIL)
    assert jsonc_configs(second) == [configs[0], mine(6000, "tok2")]
    assert second == first.replace("5678", "6000").replace("tok1", "tok2")


def test_our_config_in_the_middle_is_replaced_where_it_is(tmp_path: Path) -> None:
    text = ('{\n  "configurations": [\n    {"name": "a"}, // first\n'
            '    {"name": "fi-dist: attach all ranks", "old": true}, /* ours */\n'
            '    {"name": "b"}\n  ]\n}\n')
    out = upsert(text, mine())
    before, after = text.split('{"name": "fi-dist', 1)
    assert out.startswith(before)
    assert out.endswith(after.split("}", 1)[1])  # from the comma after ours on: untouched
    assert [c["name"] for c in jsonc_configs(out)] == ["a", ATTACH_CONFIG_NAME, "b"]
    assert jsonc_configs(out)[1] == mine()
    assert upsert(out, mine()) == out


def test_duplicates_of_ours_are_folded_into_one(tmp_path: Path) -> None:
    text = ('{"configurations": [{"name": "fi-dist: attach all ranks"}, {"name": "b"},\n'
            '  {"name": "fi-dist: attach all ranks", "old": 2},]}')
    out = upsert(text, mine())
    assert [c["name"] for c in jsonc_configs(out)] == [ATTACH_CONFIG_NAME, "b"]


@pytest.mark.parametrize("text", ["", "\n", "// launch configurations go here\n"])
def test_empty_or_comment_only_file_gets_a_document(tmp_path: Path, text: str) -> None:
    path = write_user_file(tmp_path, text)
    write_configuration(tmp_path, mine())
    out = path.read_text()
    assert out.startswith(text)
    assert json.loads(out[len(text):]) == {"version": "0.2.0", "configurations": [mine()]}


def test_missing_file_is_created_0600(tmp_path: Path) -> None:
    path = write_configuration(tmp_path, mine())
    assert path == tmp_path / ".vscode" / "launch.json"
    assert json.loads(path.read_text()) == {"version": "0.2.0", "configurations": [mine()]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_configurations_key_is_added(tmp_path: Path) -> None:
    text = '{\n  // mine\n  "version": "0.2.0",\n  "compounds": [],\n}\n'
    out = upsert(text, mine())
    assert out.startswith('{\n  // mine\n  "version": "0.2.0",\n  "compounds": [],\n'
                          '  "configurations": [\n    {\n      "name": ')
    assert out.endswith("\n  ],\n}\n")  # the user's trailing comma now follows ours
    assert jsonc_configs(out) == [mine()]


def test_crlf_and_tabs_are_followed(tmp_path: Path) -> None:
    text = '{\r\n\t"configurations": [\r\n\t\t{"name": "a"}\r\n\t]\r\n}\r\n'
    out = upsert(text, mine())
    assert out.startswith('{\r\n\t"configurations": [\r\n\t\t{"name": "a"},\r\n\t\t{\r\n\t\t\t"name"')
    assert "\n" not in out.replace("\r\n", "")


@pytest.mark.parametrize(("text", "problem"), [
    ('{\n  "configurations": [\n    {"name": "a"\n  ]\n}\n', "not valid JSON with comments"),
    ('{"configurations": [], } }', "not valid JSON with comments"),
    ("[]", "the top level is a list"),
    ('{"configurations": {"name": "a"}}', '"configurations" is an object, not a list'),
])
def test_malformed_file_is_kept_and_reported(tmp_path: Path, text: str, problem: str) -> None:
    path = write_user_file(tmp_path, text, mode=0o640)
    with pytest.raises(LaunchJsonError) as err:
        write_configuration(tmp_path, mine())
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "left unchanged" in message and ATTACH_CONFIG_NAME in message
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["launch.json"]  # no tmp, no .bak


def test_not_utf8_is_reported(tmp_path: Path) -> None:
    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    path.write_bytes(b'{"configurations": ["\xff"]}')
    with pytest.raises(LaunchJsonError, match="launch.json: 'utf-8' codec"):
        write_configuration(tmp_path, mine())


@pytest.mark.parametrize(("before", "after"), [(0o644, 0o600), (0o664, 0o600),
                                               (0o600, 0o600), (0o400, 0o400)])
def test_mode_is_tightened_when_it_holds_the_token(tmp_path: Path, before: int,
                                                   after: int) -> None:
    path = write_user_file(tmp_path, USER_FILE, mode=before)
    write_configuration(tmp_path, mine())
    assert stat.S_IMODE(path.stat().st_mode) == after


def test_mode_is_kept_for_a_config_without_token(tmp_path: Path) -> None:
    path = write_user_file(tmp_path, USER_FILE, mode=0o644)
    write_configuration(tmp_path, {"name": "fi-dist: resume all ranks", "type": "node-terminal",
                                   "request": "launch", "command": "fi-dist resume"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert path.read_text().startswith(USER_HEAD.rstrip(",\n") + ",\n")


def test_never_looser_in_between(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporary file is 0600 before the token is written into it, whatever the umask."""
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0)
    try:
        write_configuration(tmp_path, mine())
        hub_launchjson.publish(mine(), None, tmp_path / "run", rank_port=1)
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600]
    assert stat.S_IMODE((tmp_path / "run" / "debug.json").stat().st_mode) == 0o600


def test_symlinked_launch_json_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "launch.json"
    real.parent.mkdir()
    real.write_text(USER_FILE)
    (tmp_path / ".vscode").mkdir()
    (tmp_path / ".vscode" / "launch.json").symlink_to(real)
    write_configuration(tmp_path, mine())
    assert (tmp_path / ".vscode" / "launch.json").is_symlink()
    assert jsonc_configs(real.read_text())[1] == mine()


def test_hub_publish_writes_both_types_in_one_write_keeping_the_users_file(
        tmp_path: Path) -> None:
    path = write_user_file(tmp_path, USER_FILE)
    hub_launchjson.publish(mine(), tmp_path, tmp_path / "run", rank_port=1)
    text = path.read_text()
    assert text.startswith(USER_HEAD) and text.endswith(USER_TAIL)
    assert [c["type"] for c in jsonc_configs(text)] == ["debugpy", "fi-dist", "debugpy"]
    assert jsonc_configs(text)[1:] == launchjson.attach_configurations(mine())
    hub_launchjson.publish(mine(7000), tmp_path, tmp_path / "run", rank_port=1)  # replaced
    assert jsonc_configs(path.read_text())[1:] == launchjson.attach_configurations(mine(7000))
    assert RunDir(tmp_path / "run").debug_config() == mine(7000)


def test_hub_publish_warns_and_goes_on_with_a_malformed_file(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_user_file(tmp_path, "{ not json")
    hub_launchjson.publish(mine(), tmp_path, tmp_path / "run", rank_port=1)
    assert path.read_text() == "{ not json"
    assert f"{path}: not valid JSON with comments" in caplog.text
    assert RunDir(tmp_path / "run").debug_config() == mine()  # attach --print still works


def test_attach_config_has_one_definition() -> None:
    assert mine() == {"name": "fi-dist: attach all ranks", "type": "fi-dist",
                      "request": "attach", "connect": {"host": "127.0.0.1", "port": 5678},
                      "justMyCode": False, "fiDistToken": "tok"}
    # The same attach for Microsoft's Python Debugger: only name and type differ.
    twin = launchjson.debugpy_config(mine())
    assert twin == {**mine(), "name": "fi-dist: attach all ranks (Python Debugger)",
                    "type": "debugpy"}
    assert launchjson.attach_configurations(mine()) == [mine(), twin]
    assert launchjson.TOKEN_KEY in mine()
    import fi_dist.launchers.pytorchjob as pj

    assert pj.attach_config is launchjson.attach_config
    assert not hasattr(hub_launchjson, "attach_config")


class _Forward:
    local_port = 40123
    closed = False

    def close(self) -> None:
        self.closed = True


def test_fi_dist_attach_job_reports_a_malformed_file_and_exits_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from fi_dist import cli, job_commands

    fwd = _Forward()

    from fi_dist.launcher import Attachment

    class Launcher:
        def attach(self, job_id: str, local_port: int | None = None) -> Attachment:
            return Attachment(mine(fwd.local_port), forward=fwd)

    monkeypatch.setattr(job_commands, "resolve", lambda args: (Launcher(), "ns:job"))
    monkeypatch.chdir(tmp_path)
    path = write_user_file(tmp_path, '{"configurations": [ // unfinished\n')
    assert cli.main(["attach", "ns:job", "--launcher", "pytorchjob"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fi-dist: error: {path}: not valid JSON with comments")
    assert fwd.closed and path.read_text() == '{"configurations": [ // unfinished\n'

    path.write_text("// mine\n{}\n")  # a file we can edit: written, the forward held
    fwd.closed = False
    job_commands.cmd_attach(
        cli.build_parser().parse_args(["attach", "ns:job", "--launcher", "pytorchjob"]),
        wait=lambda: None)
    assert fwd.closed and path.read_text().startswith("// mine\n{\n")
    assert jsonc_configs(path.read_text()) == launchjson.attach_configurations(
        mine(fwd.local_port))


def test_shared_core_imports_neither_side() -> None:
    """fi_dist.launchjson and what it imports of fi_dist: no runtime, launcher, CLI or k8s."""
    import ast

    root = Path(launchjson.__file__).parent
    todo, seen = ["fi_dist.launchjson"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse((root.parent / (name.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for mod in names:
                if mod.startswith("fi_dist") and (root.parent / (mod.replace(".", "/") + ".py")).is_file():
                    todo.append(mod)
    assert seen == {"fi_dist.launchjson", "fi_dist.errors", "fi_dist.rundir"}
