"""The real code-server (npm, pinned) as rank 0 starts it: loopback, password auth, activity.

Skipped only where npm is missing (code-server cannot be installed there), saying so.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
import threading
import urllib.parse
from pathlib import Path

import pytest

from fi_dist.runtime import codeserver

REPO = Path(__file__).resolve().parents[2]


def code_server_binary() -> Path:
    """The installed code-server; installs it (scripts/install_code_server.sh) if needed."""
    found = codeserver.find()
    if found is not None:
        return found
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: code-server (from the npm registry) cannot be "
                    "installed on this machine")
    subprocess.run(["bash", str(REPO / "scripts" / "install_code_server.sh")], check=True,
                   timeout=900)
    found = codeserver.find()
    assert found is not None, "scripts/install_code_server.sh ran but code-server is not found"
    return found


def _request(port: int, method: str, path: str, body: str | None = None,
             cookie: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read_body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


@pytest.fixture
def running(tmp_path: Path):
    binary = code_server_binary()
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "train.py").write_text("print('hello')\n")
    cfg = codeserver.CodeServerConfig(folder=ws, state_dir=tmp_path / "state",
                                      password="correct-horse", port=0)
    cs = codeserver.CodeServer(cfg, binary).start(timeout=90)
    yield cs
    cs.stop()


@pytest.mark.timeout(240)
def test_code_server_serves_its_page_behind_password_on_loopback(running: codeserver.CodeServer
                                                                 ) -> None:
    cs = running
    assert cs.url.startswith("http://127.0.0.1:")
    health = cs.health()
    assert health is not None and health["status"] in ("alive", "expired")
    # Without a session cookie: sent to the login page, no workbench.
    resp = _request(cs.port, "GET", "/")
    assert resp.status == 302 and "login" in resp.getheader("Location", "")
    # A wrong password gets no cookie; the right one does.
    bad = _request(cs.port, "POST", "/login", urllib.parse.urlencode({"password": "nope"}))
    assert bad.getheader("Set-Cookie") is None
    good = _request(cs.port, "POST", "/login",
                    urllib.parse.urlencode({"password": "correct-horse"}))
    cookie = good.getheader("Set-Cookie", "")
    assert good.status == 302 and cookie.startswith("code-server-session=")
    page = _request(cs.port, "GET", "/", cookie=cookie.split(";")[0])
    if page.status == 302:  # logged in: sent on to the workspace folder it was started in
        location = page.getheader("Location", "")
        assert "folder=" in location and "ws" in urllib.parse.unquote(location)
        page = _request(cs.port, "GET", "/" + location.lstrip("./"), cookie=cookie.split(";")[0])
    assert page.status == 200
    html = page.read_body.decode()  # type: ignore[attr-defined]
    assert "workbench" in html.lower()
    # Config and data stay in the state directory, not in $HOME.
    assert (cs.cfg.state_dir / "user-data").is_dir()
    # The server listens on loopback only: the port is closed on another local address.
    with pytest.raises(OSError):
        _request_other = http.client.HTTPConnection("127.0.0.2", cs.port, timeout=3)
        _request_other.request("GET", "/healthz")


@pytest.mark.timeout(240)
def test_code_server_heartbeat_feeds_activity(running: codeserver.CodeServer) -> None:
    cs = running
    seen = threading.Event()
    cs.feed_activity(seen.set, interval=0.2)
    # Polling /healthz alone is not activity.
    assert not seen.wait(1.0)
    good = _request(cs.port, "POST", "/login",
                    urllib.parse.urlencode({"password": "correct-horse"}))
    cookie = good.getheader("Set-Cookie", "").split(";")[0]
    _request(cs.port, "GET", "/", cookie=cookie)
    assert seen.wait(15), "a page load did not advance code-server's heartbeat"


def test_code_server_stop_ends_its_processes(running: codeserver.CodeServer) -> None:
    cs = running
    pid = cs.proc.pid  # type: ignore[union-attr]
    cs.stop()
    assert cs.proc.poll() is not None  # type: ignore[union-attr]
    assert cs.health() is None
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_missing_code_server_is_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FI_DIST_CODE_SERVER", str(tmp_path / "no-such-code-server"))
    cfg = codeserver.CodeServerConfig(folder=tmp_path, state_dir=tmp_path / "s", password="x")
    assert codeserver.start(cfg) is None
    err = capsys.readouterr().err
    assert "code-server is not installed" in err and "install_code_server.sh" in err
    assert "port-forward" in err


def test_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port"):
        codeserver.CodeServerConfig(folder=tmp_path, state_dir=tmp_path, password="x", port=70000)
    with pytest.raises(ValueError, match="password"):
        codeserver.CodeServerConfig(folder=tmp_path, state_dir=tmp_path, password="")
