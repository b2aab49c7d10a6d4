"""Resume's two channels under attack, in process: the signed store generations and the
HTTP endpoint (the attacker as another uid is in tests/integration/test_security_files.py)."""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from fi_dist.runtime import generation, resume
from fi_dist.runtime.generation import GenerationRefused, Scope

TOKEN = "0123456789abcdef0123456789abcdef"
SCOPE = Scope("run-7", 0, 1)


# --- signatures ---------------------------------------------------------------------------
def test_a_signed_generation_verifies() -> None:
    raw = generation.sign(TOKEN, SCOPE, 3, {"a.py": b"x = 1\n"})
    assert generation.verify(raw, TOKEN, SCOPE, 3) == {"a.py": b"x = 1\n"}
    assert TOKEN not in raw  # the token itself never goes on the store


@pytest.mark.parametrize(("change", "why"), [
    (lambda raw: generation.verify(raw, "another-token", SCOPE, 3), "bad signature"),
    (lambda raw: generation.verify(raw, TOKEN, SCOPE, 4), "signed as generation 3 but found as"),
    (lambda raw: generation.verify(raw, TOKEN, Scope("run-8", 0, 1), 3), "signed for run run-7"),
    (lambda raw: generation.verify(raw, TOKEN, Scope("run-7", 1, 1), 3), "attempt 0"),
    (lambda raw: generation.verify(raw, TOKEN, Scope("run-7", 0, 2), 3), "restart 1"),
    (lambda raw: generation.verify(raw, TOKEN, SCOPE, 3, not_before=time.time() + 100),
     "before this rank's watcher started"),
    (lambda raw: generation.verify(raw.replace("eCA9IDEK", "eCA9IDIK"), TOKEN, SCOPE, 3),
     "bad signature"),
    (lambda raw: generation.verify(json.dumps({"a.py": "eCA9IDIK"}), TOKEN, SCOPE, 3),
     "not a signed generation"),
    (lambda raw: generation.verify(b"\xff" * 10, TOKEN, SCOPE, 3), "not a signed generation"),
])
def test_forged_replayed_or_foreign_generations_are_refused(change, why: str) -> None:
    raw = generation.sign(TOKEN, SCOPE, 3, {"a.py": b"x = 1\n"})
    with pytest.raises(GenerationRefused, match=why):
        change(raw)


def test_an_oversized_value_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generation, "MAX_PAYLOAD", 100)
    with pytest.raises(GenerationRefused, match="over the 100-byte cap"):
        generation.verify(b"{" * 101, TOKEN, SCOPE, 1)


def test_scope_comes_from_the_environment() -> None:
    env = {"FI_DIST_RUN_ID": "r", "FI_DIST_ATTEMPT": "2", "TORCHELASTIC_RESTART_COUNT": "3"}
    assert Scope.from_env(env) == Scope("r", 2, 3)
    assert Scope.from_env({"TORCHELASTIC_RUN_ID": "flyte-exec"}) == Scope("flyte-exec", 0, 0)


# --- the watcher against a real TCPStore ----------------------------------------------------
@pytest.fixture
def store():
    """The job's store as torchelastic runs it (TCPStore on loopback) and a client of it."""
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                           timeout=timedelta(seconds=30))
    client = dist.TCPStore("127.0.0.1", server.port, is_master=False, wait_for_workers=False,
                           timeout=timedelta(seconds=30))
    return server, client


def test_watcher_refuses_a_forgery_applies_the_signed_one_refuses_its_replay(
        tmp_path: Path, store, caplog: pytest.LogCaptureFixture) -> None:
    server, attacker = store
    root = tmp_path / "rank"
    root.mkdir()
    (root / "train.py").write_text("ok = True\n")
    watcher = resume.Watcher(server, root, TOKEN, SCOPE, lambda g, w: None, label="rank 1")
    # A client without the token publishes its own "generation" straight into the store.
    attacker.set(generation.PAYLOAD_KEY.format(1),
                 generation.sign("guessed-token", SCOPE, 1, {"train.py": b"pwned()\n"}))
    attacker.add(generation.GEN_KEY, 1)
    with caplog.at_level(logging.ERROR, "fi_dist.resume"):
        assert watcher.poll() is None
    assert (root / "train.py").read_text() == "ok = True\n"
    assert "rank 1: resume generation 1 REFUSED, nothing written: bad signature" in caplog.text
    # rank 0's real generation is applied.
    assert generation.publish(server, TOKEN, SCOPE, {"train.py": b"fixed = True\n"}) == 2
    assert watcher.poll() == (2, ["train.py"])
    assert (root / "train.py").read_text() == "fixed = True\n"
    # Replaying it under the next number restarts nothing and writes nothing.
    (root / "train.py").write_text("edited later\n")
    attacker.set(generation.PAYLOAD_KEY.format(3), attacker.get(generation.PAYLOAD_KEY.format(2)))
    attacker.add(generation.GEN_KEY, 1)
    assert watcher.poll() is None
    assert (root / "train.py").read_text() == "edited later\n"
    assert [gen for gen, _ in watcher.refused] == [1, 3]
    assert "found as generation 3 (an old generation replayed)" in watcher.refused[1][1]


def test_a_forged_counter_bump_does_not_hide_the_real_generation(tmp_path: Path, store) -> None:
    server, attacker = store
    watcher = resume.Watcher(server, tmp_path, TOKEN, SCOPE, lambda g, w: None)
    generation.publish(server, TOKEN, SCOPE, {"a.py": b"a = 1\n"})
    attacker.add(generation.GEN_KEY, 5)  # numbers with no (or forged) payloads after it
    assert watcher.poll() == (1, ["a.py"])


def test_a_signed_generation_with_a_dot_path_writes_nothing(tmp_path: Path, store) -> None:
    server, _ = store
    watcher = resume.Watcher(server, tmp_path, TOKEN, SCOPE, lambda g, w: None)
    generation.publish(server, TOKEN, SCOPE, {"ok.py": b"", ".git/hooks/x.py": b""})
    assert watcher.poll() is None
    assert not (tmp_path / "ok.py").exists()


# --- what the endpoint may write ----------------------------------------------------------
@pytest.mark.parametrize("rel", [".git/config", "x.so", ".git/hooks/pre-commit.py",
                                 "pkg/.hidden/m.py", "node_modules/m.py", "__pycache__/m.py",
                                 ".vscode/settings.toml", "README.md", "../up.py"])
def test_only_source_files_outside_dot_directories(tmp_path: Path, rel: str) -> None:
    with pytest.raises(resume.ResumeError):
        resume.write_files(tmp_path, {"good.py": b"x", rel: b"y"})
    assert list(tmp_path.iterdir()) == []  # checked before the first byte is written


def test_a_symlink_into_a_dot_directory_is_followed_and_refused(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "src").symlink_to(tmp_path / ".git")
    with pytest.raises(resume.ResumeError, match="'.git'"):
        resume.write_files(tmp_path, {"src/m.py": b"x"})


# --- the HTTP endpoint --------------------------------------------------------------------
@pytest.fixture
def endpoint(tmp_path: Path, store):
    server_store, _ = store
    root = tmp_path / "src"
    root.mkdir()
    (root / "train.py").write_text("bug = True\n")
    srv = resume.ResumeServer(server_store, root, TOKEN, SCOPE, resume.snapshot(root),
                              lambda: None, head_deadline=1.0, io_timeout=2.0, workers=2,
                              max_pending=32).start()
    yield srv
    srv.close()


def _request(srv: resume.ResumeServer, path: str, auth: str | None, body: dict | None = None
             ) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(srv.url + path, data=data, method="POST" if data else "GET")
    if auth is not None:
        req.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_bearer_is_required(endpoint: resume.ResumeServer) -> None:
    edit = {"files": {"train.py": "bug = False\n"}}
    assert _request(endpoint, "/resume", None, edit)[0] == 401
    assert _request(endpoint, "/resume", TOKEN, edit)[0] == 401  # the raw token
    assert _request(endpoint, "/resume", f"Basic {TOKEN}", edit)[0] == 401
    assert _request(endpoint, "/resume", "Bearer " + "0" * 32, edit)[0] == 401
    assert (endpoint.root / "train.py").read_text() == "bug = True\n"
    assert _request(endpoint, "/status", f"bearer {TOKEN}")[0] == 200  # scheme is case-blind
    code, answer = _request(endpoint, "/resume", f"Bearer {TOKEN}", edit)
    assert (code, answer["files"]) == (200, ["train.py"])


@pytest.mark.parametrize("rel", [".git/config", "x.so"])
def test_edits_outside_the_source_rules_are_400_and_write_nothing(
        endpoint: resume.ResumeServer, rel: str) -> None:
    code, answer = _request(endpoint, "/resume", f"Bearer {TOKEN}",
                            {"files": {"train.py": "bug = False\n", rel: "[core]\n"}})
    assert code == 400 and repr(rel) in answer["error"]
    assert not (endpoint.root / rel).exists()
    assert (endpoint.root / "train.py").read_text() == "bug = True\n"
    assert generation.latest(endpoint.store) == 0


def test_an_unauthenticated_body_is_never_read(endpoint: resume.ResumeServer) -> None:
    host, port = endpoint.httpd.server_address
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"POST /resume HTTP/1.0\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.0 401")


def test_idle_connections_are_closed_and_threads_stay_bounded(
        endpoint: resume.ResumeServer) -> None:
    before = threading.active_count()
    host, port = endpoint.httpd.server_address
    idle = [socket.create_connection((host, port), timeout=10) for _ in range(200)]
    try:
        assert threading.active_count() <= before + 1
        # Every one is closed by the server: evicted (more than max_pending) or timed out.
        deadline = time.monotonic() + 8
        for s in idle:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            assert s.recv(1) == b""
        assert time.monotonic() < deadline
        assert threading.active_count() <= before + 1
        # ... and the endpoint still serves.
        assert _request(endpoint, "/status", f"Bearer {TOKEN}")[0] == 200
    finally:
        for s in idle:
            s.close()


def test_a_slow_head_is_cut_at_the_deadline(endpoint: resume.ResumeServer) -> None:
    """A client trickling header lines never gets a worker and is closed at the deadline."""
    host, port = endpoint.httpd.server_address
    with socket.create_connection((host, port), timeout=10) as s:
        start = time.monotonic()
        s.sendall(b"GET /status HTTP/1.0\r\n")
        closed = False
        while not closed and time.monotonic() - start < 5:
            try:
                s.sendall(b"X-Slow: 1\r\n")
                if select.select([s], [], [], 0.2)[0]:
                    closed = s.recv(1) == b""
            except OSError:
                closed = True
        assert closed and time.monotonic() - start < 3


def test_disconnects_leave_no_traceback_and_the_log_stays_small(
        endpoint: resume.ResumeServer, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    host, port = endpoint.httpd.server_address
    with caplog.at_level(logging.INFO, "fi_dist.resume"):
        start = time.monotonic()
        for i in range(300):
            s = socket.create_connection((host, port), timeout=5)
            if i % 3 == 0:  # authorized, then gone before the answer (RST)
                s.sendall(f"GET /status HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                          .encode())
            elif i % 3 == 1:  # no token
                s.sendall(b"GET /status HTTP/1.0\r\n\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        elapsed = time.monotonic() - start
        time.sleep(0.5)
        endpoint.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err
    records = [r for r in caplog.records if r.name == "fi_dist.resume"]
    assert len(records) <= 3 * (elapsed + 2), [r.getMessage() for r in records]
    assert endpoint.httpd.unauthorized.total >= 1
    counted = (endpoint.httpd.disconnects.total + endpoint.httpd.unauthorized.total)
    assert counted >= 100
