"""Where the job token lives on disk and who may read it."""

from __future__ import annotations

import stat
from pathlib import Path

from fi_dist import rundir
from fi_dist.launcher import Attachment, run_attachment
from fi_dist.launchjson import attach_config, write_configuration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_run_directories_are_private_and_ignored_by_git(tmp_path: Path) -> None:
    run = rundir.create_run(tmp_path)
    base = tmp_path / ".fi-dist"
    assert [mode(p) for p in (base, base / "runs", run.path)] == [0o700] * 3
    assert (base / ".gitignore").read_text().splitlines()[-1] == "*"


def test_an_existing_root_of_ours_is_tightened(tmp_path: Path) -> None:
    (tmp_path / ".fi-dist" / "runs").mkdir(parents=True)
    for p in (tmp_path / ".fi-dist", tmp_path / ".fi-dist" / "runs"):
        p.chmod(0o755)
    (tmp_path / ".fi-dist" / ".gitignore").write_text("mine\n")
    rundir.create_run(tmp_path)
    assert mode(tmp_path / ".fi-dist") == 0o700 and mode(tmp_path / ".fi-dist" / "runs") == 0o700
    assert (tmp_path / ".fi-dist" / ".gitignore").read_text() == "mine\n"  # the user's stays


def test_a_directory_made_for_a_secret_is_private_an_existing_one_is_left(
        tmp_path: Path) -> None:
    write_configuration(tmp_path / "fresh", attach_config("127.0.0.1", 1, "tok"))
    assert mode(tmp_path / "fresh" / ".vscode") == 0o700
    assert mode(tmp_path / "fresh" / ".vscode" / "launch.json") == 0o600
    (tmp_path / "mine" / ".vscode").mkdir(parents=True)
    (tmp_path / "mine" / ".vscode").chmod(0o755)
    write_configuration(tmp_path / "mine", attach_config("127.0.0.1", 1, "tok"))
    assert mode(tmp_path / "mine" / ".vscode") == 0o755  # the user's directory


def test_attach_says_where_the_token_is_and_how_long_it_lives(tmp_path: Path) -> None:
    from fi_dist.job_commands import token_note

    run = rundir.create_run(tmp_path)
    rundir.write_json(run.debug_file, {"config": attach_config("127.0.0.1", 5678, "t")},
                      mode=0o600)
    launch = write_configuration(tmp_path, attach_config("127.0.0.1", 5678, "t"))
    attachment = run_attachment(run.path)
    note = token_note(attachment, launch)
    assert f"{run.debug_file} (mode 0600)" in note
    assert note.count(str(launch)) == 1  # the hub's launch.json is the one attach wrote
    assert f"valid until run {run.run_id} ends" in note
    cluster = Attachment({}, token_lifetime="as long as the Secret default/j-fi-dist-debug")
    assert "as long as the Secret default/j-fi-dist-debug" in token_note(cluster, None)
