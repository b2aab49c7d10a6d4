"""Shipping edited source to ranks that share no filesystem, through a real TCPStore."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from fi_dist.runtime import generation, resume

TOKEN = "job-token"
SCOPE = generation.Scope("run-1", 0, 0)


def fetch(store, gen: int) -> dict[str, bytes]:
    """Generation ``gen``'s files, verified like a watcher does."""
    return generation.verify(generation.payload(store, gen), TOKEN, SCOPE, gen)


def publish(store, files: dict[str, bytes]) -> int:
    return generation.publish(store, TOKEN, SCOPE, files)


@pytest.fixture
def stores():
    """A TCPStore server (rank 0's side) and a client (another node's rank)."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=30))
    client = dist.TCPStore("127.0.0.1", server.port, is_master=False, wait_for_workers=False,
                           timeout=timedelta(seconds=30))
    yield server, client


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_snapshot_diff_ships_only_edited_source(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"train.py": "a = 1\n", "pkg/model.py": "b = 2\n",
                            "conf.yaml": "lr: 1\n", "out/metrics.json": "{}",
                            "__pycache__/x.py": "", ".vscode/launch.py": "",
                            ".hidden/y.py": "", ".dotfile.py": ""})
    before = resume.snapshot(root)
    assert set(before) == {"train.py", "pkg/model.py", "conf.yaml"}
    (root / "pkg/model.py").write_text("b = 3\n")
    (root / "new.py").write_text("c = 1\n")
    (root / "out/metrics.json").write_text('{"loss": 1}')  # job output, not source
    assert resume.changed_files(root, before) == {"pkg/model.py": b"b = 3\n", "new.py": b"c = 1\n"}


@pytest.mark.parametrize("bad", ["../x.py", "/etc/passwd", "a/../../x.py", ""])
def test_paths_may_not_leave_the_root(tmp_path: Path, bad: str) -> None:
    with pytest.raises(resume.ResumeError):
        resume.write_files(tmp_path, {bad: b"x"})


def test_a_generation_reaches_a_rank_without_the_files(tmp_path: Path, stores) -> None:
    server, client = stores
    node0 = _tree(tmp_path / "node0", {"train.py": "bug = True\n", "util.py": "u = 1\n"})
    node1 = _tree(tmp_path / "node1", {"train.py": "bug = True\n", "util.py": "u = 1\n"})
    got: list[tuple[int, list[str]]] = []
    done = threading.Event()
    watcher = resume.Watcher(client, node1, TOKEN, SCOPE,
                             lambda g, w: (got.append((g, w)), done.set()), interval=0.05).start()
    before = resume.snapshot(node0)
    (node0 / "train.py").write_text("bug = False\n")
    gen = publish(server, resume.changed_files(node0, before))
    assert gen == 1
    assert done.wait(10)
    watcher.stop()
    assert got == [(1, ["train.py"])]
    assert (node1 / "train.py").read_text() == "bug = False\n"
    assert (node1 / "util.py").read_text() == "u = 1\n"


def test_a_watcher_ignores_generations_from_before_its_start(tmp_path: Path, stores) -> None:
    server, client = stores
    publish(server, {"old.py": b"x"})
    fired = threading.Event()
    watcher = resume.Watcher(client, tmp_path, TOKEN, SCOPE, lambda g, w: fired.set(),
                             interval=0.05).start()
    assert not fired.wait(0.5)
    assert not (tmp_path / "old.py").exists()
    publish(server, {"new.py": b"y"})
    assert fired.wait(10)
    watcher.stop()
    assert (tmp_path / "new.py").read_bytes() == b"y"


def test_resume_endpoint_auth_edits_and_refusal(tmp_path: Path, stores) -> None:
    server_store, _ = stores
    root = _tree(tmp_path, {"buggy.py": "raise ValueError\n"})
    refuse: list[str | None] = [None]
    srv = resume.ResumeServer(server_store, root, TOKEN, SCOPE, resume.snapshot(root),
                              lambda: refuse[0], status=lambda: {"failed": "1"}).start()
    try:
        session = {"resume_url": srv.url, "token": TOKEN}
        assert srv.url.startswith("http://127.0.0.1:")
        with pytest.raises(resume.ResumeError, match="401"):
            resume.request_resume({**session, "token": "nope"})
        answer = resume.request_resume(session, files={"buggy.py": "pass\n"})
        assert answer == {"generation": 1, "files": ["buggy.py"]}
        assert (root / "buggy.py").read_text() == "pass\n"
        assert fetch(server_store, 1) == {"buggy.py": b"pass\n"}
        refuse[0] = "no restart left (TORCHELASTIC_MAX_RESTARTS=0)"
        with pytest.raises(resume.ResumeError, match="no restart left"):
            resume.request_resume(session)
    finally:
        srv.close()


def test_read_session_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(resume.ResumeError, match="no interactive session file"):
        resume.read_session(tmp_path / "nope.json")


def test_fi_dist_resume_cli_finds_the_session_from_a_subdirectory(
        tmp_path: Path, stores, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from fi_dist.cli import main

    server_store, _ = stores
    root = _tree(tmp_path, {"train.py": "bug = True\n", "pkg/m.py": ""})
    srv = resume.ResumeServer(server_store, root, TOKEN, SCOPE, resume.snapshot(root),
                              lambda: None).start()
    try:
        (root / ".vscode").mkdir()
        (root / resume.SESSION_FILE).write_text(json.dumps({"resume_url": srv.url,
                                                            "token": TOKEN}))
        (root / "train.py").write_text("bug = False\n")  # the edit made in code-server
        monkeypatch.chdir(root / "pkg")  # the launch config runs in ${workspaceFolder}
        assert main(["resume"]) == 0
        assert "resume generation 1: shipped train.py" in capsys.readouterr().out
        assert fetch(server_store, 1) == {"train.py": b"bug = False\n"}
        monkeypatch.chdir(tmp_path.parent)
        assert main(["resume", "--session", str(tmp_path / "none.json")]) == 2
        assert "no interactive session file" in capsys.readouterr().err
    finally:
        srv.close()
