"""Where the job token lives on disk and who may read it; where a rank's token comes from."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from fi_dist import env_vars as ev
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


# --- where a rank's token comes from ---------------------------------------------------------
def _env(world: int, nnodes: int):
    from fi_dist.runtime.environment import RankEnvironment

    per = world // nnodes
    return RankEnvironment.from_env({
        ev.RANK: "0", ev.WORLD_SIZE: str(world), ev.LOCAL_RANK: "0",
        ev.LOCAL_WORLD_SIZE: str(per), ev.GROUP_RANK: "0", ev.GROUP_WORLD_SIZE: str(nnodes),
        ev.TORCHELASTIC_RUN_ID: "x"})


@pytest.mark.parametrize(("env_token", "world", "nnodes", "handed", "expect"), [
    ("from-secret", 8, 2, "handed", "from-secret"),  # the environment wins
    (None, 2, 1, "handed", "handed"),  # one node: the parent's in-memory token
    (None, 1, 1, None, "fresh"),  # the whole job is this process
    (None, 8, 2, "handed", "error"),  # several nodes: each parent made its own
    (None, 2, 1, None, "error"),  # torchrun ranks that imported the script themselves
])
def test_job_token_sources(monkeypatch: pytest.MonkeyPatch, env_token, world, nnodes, handed,
                           expect) -> None:
    from fi_dist.runtime.interactive import NoJobTokenError, job_token

    if env_token:
        monkeypatch.setenv(ev.FI_DIST_DEBUG_TOKEN, env_token)
    else:
        monkeypatch.delenv(ev.FI_DIST_DEBUG_TOKEN, raising=False)
    env = _env(world, nnodes)
    if expect == "error":
        with pytest.raises(NoJobTokenError, match="needs the job token in FI_DIST_DEBUG_TOKEN"):
            job_token(env, handed)
    elif expect == "fresh":
        assert len(job_token(env, handed)) == 32
    else:
        assert job_token(env, handed) == expect


def test_a_worker_gets_its_parents_token_only_through_the_pickle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fi_dist.integrations.flyte import InteractiveConfig, _Target

    target = _Target(len, InteractiveConfig(enable=True), None)
    assert target.handed_token is None  # made in this process: not handed to it
    monkeypatch.delenv(ev.FI_DIST_DEBUG_TOKEN, raising=False)
    worker = pickle.loads(pickle.dumps(target))
    monkeypatch.setattr(os, "getpid", lambda: target.parent[0] + 1)  # as seen in a worker
    assert worker.handed_token == target.parent[1]
    # Off, or with a token in the environment, the pickle carries none.
    monkeypatch.setenv(ev.FI_DIST_DEBUG_TOKEN, "from-secret")
    assert target.parent[1] not in repr(pickle.loads(pickle.dumps(target)).parent)
    monkeypatch.delenv(ev.FI_DIST_DEBUG_TOKEN)
    off = _Target(len, InteractiveConfig(enable=False), None)
    assert pickle.loads(pickle.dumps(off)).parent[1] != off.parent[1]

