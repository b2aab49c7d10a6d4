"""Resume with edited code: ship changed source files to every rank, then restart the ranks.

The user edits the task's source on rank 0 (in code-server) and triggers resume (the
``fi-dist: resume all ranks`` launch configuration, ``fi-dist resume``, or
:func:`request_resume`). Then:

1. rank 0 of node 0's :class:`ResumeServer` (127.0.0.1, job token) writes the files the
   request carries, diffs the source root against the snapshot taken when the task
   started and publishes the changed files as one *generation* in the job's rendezvous
   store (torchelastic's agent store: every rank of every node reaches it, nodes share no
   filesystem);
2. every rank's :class:`Watcher` (a thread the debugger never pauses) fetches the
   generation, writes the files into its own source root and ends its process with
   :data:`RESUME_EXIT_CODE`, whatever the main thread is doing (stopped post-mortem,
   blocked in a collective waiting for the failed rank, still computing);
3. torchelastic restarts the worker group (``max_restarts``): fresh processes import the
   edited modules, the decorator reloads the task function from its file, and the
   training function re-enters from the last checkpoint.

Only text source files under the root are shipped (:data:`SHIPPED_SUFFIXES`), with a
size cap; paths are relative and may not leave the root.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("fi_dist.resume")

RESUME_EXIT_CODE = 198
"""A rank that ends for a resume exits with this (>= 128: retryable for fi-dist's launchers)."""
SHIPPED_SUFFIXES = (".py", ".pyi", ".yaml", ".yml", ".toml", ".cfg", ".ini")
"""Which files under the source root count as source (code and config; not the JSON,
text and data a running job writes next to its code)."""
SKIPPED_DIRS = {"__pycache__", "node_modules", ".git", ".vscode", ".fi-dist", ".tools",
                ".venv", "venv"}
MAX_FILE = 1 << 20
"""Bytes: a bigger file is data, not source, and is not shipped."""
MAX_FILES = 5000
GEN_KEY = "fi_dist/resume/gen"
_PAYLOAD_KEY = "fi_dist/resume/payload/{}"


class ResumeError(RuntimeError):
    """A resume request that cannot be served (bad path, no restarts left, no session)."""


# --- the source tree ----------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_files(root: Path) -> dict[str, Path]:
    """Relative path -> file for every shipped source file under ``root``."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(SHIPPED_SUFFIXES):
                continue
            path = Path(dirpath) / name
            try:
                if path.stat().st_size > MAX_FILE:
                    continue
            except OSError:
                continue
            out[path.relative_to(root).as_posix()] = path
            if len(out) >= MAX_FILES:
                return out
    return out


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every source file (taken when the task starts)."""
    return {rel: _digest(p.read_bytes()) for rel, p in source_files(root).items()}


def changed_files(root: Path, before: dict[str, str]) -> dict[str, bytes]:
    """Files added or edited under ``root`` since the snapshot ``before``."""
    out: dict[str, bytes] = {}
    for rel, path in source_files(root).items():
        data = path.read_bytes()
        if before.get(rel) != _digest(data):
            out[rel] = data
    return out


def safe_path(root: Path, rel: str) -> Path:
    """``root/rel``, refusing absolute paths and ``..`` that would leave the root."""
    if not rel or Path(rel).is_absolute():
        raise ResumeError(f"source path {rel!r} must be relative to the source root")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise ResumeError(f"source path {rel!r} leaves the source root {root}")
    return target


def write_files(root: Path, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` under ``root`` atomically; returns the paths whose content changed."""
    written = []
    for rel, data in sorted(files.items()):
        target = safe_path(root, rel)
        if target.is_file() and target.read_bytes() == data:
            continue  # another rank of this node got there first (shared filesystem)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.fi-dist-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written.append(rel)
    return written


# --- generations in the rendezvous store -----------------------------------------------------
def publish(store: Any, files: dict[str, bytes]) -> int:
    """Put ``files`` in the store as the next generation; returns its number."""
    payload = json.dumps({rel: base64.b64encode(d).decode() for rel, d in files.items()})
    gen = int(store.add(GEN_KEY, 0)) + 1
    store.set(_PAYLOAD_KEY.format(gen), payload)
    store.add(GEN_KEY, 1)  # published after the payload: a watcher never reads a half
    return gen


def fetch(store: Any, gen: int) -> dict[str, bytes]:
    """The files of generation ``gen``."""
    raw = store.get(_PAYLOAD_KEY.format(gen))
    return {rel: base64.b64decode(d) for rel, d in json.loads(raw).items()}


def _system_thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.pydev_do_not_trace = True  # type: ignore[attr-defined]  # never paused by "pause all"
    t.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    t.start()
    return t


class Watcher:
    """Every rank: waits for a new generation, applies it, then calls ``on_resume``."""

    def __init__(self, store: Any, root: Path, on_resume: Callable[[int, list[str]], None],
                 interval: float = 0.2) -> None:
        self.store = store
        self.root = root
        self.on_resume = on_resume
        self.interval = interval
        self.seen = int(store.add(GEN_KEY, 0))  # generations before this attempt are applied
        self._stop = threading.Event()

    def start(self) -> Watcher:
        _system_thread(self._run, "fi-dist-resume-watch")
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                gen = int(self.store.add(GEN_KEY, 0))
                if gen <= self.seen:
                    continue
                written = write_files(self.root, fetch(self.store, gen))
            except Exception as exc:  # the store is gone with the job: nothing to resume
                log.debug("resume watcher: %s", exc)
                if self._stop.wait(1.0):
                    return
                continue
            self.seen = gen
            self.on_resume(gen, written)
            return


# --- the endpoint on rank 0 of node 0 ---------------------------------------------------------
class ResumeServer:
    """HTTP on 127.0.0.1: ``POST /resume`` (optional ``{"files": {path: text}}``), ``GET /status``.

    Every request carries ``Authorization: Bearer <job token>``.
    """

    def __init__(self, store: Any, root: Path, token: str, before: dict[str, str],
                 can_restart: Callable[[], str | None], host: str = "127.0.0.1",
                 port: int = 0, status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.store, self.root, self.token, self.before = store, root, token, before
        self.can_restart = can_restart
        self.status = status or (lambda: {})
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("resume endpoint: " + fmt, *args)

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorized(self) -> bool:
                given = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if hmac.compare_digest(given.encode(), server.token.encode()):
                    return True
                self._reply(401, {"error": "missing or wrong job token"})
                return False

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self._authorized():
                    self._reply(200, {"generation": int(server.store.add(GEN_KEY, 0)),
                                      **server.status()})

            def do_POST(self) -> None:  # noqa: N802
                if not self._authorized():
                    return
                if self.path != "/resume":
                    self._reply(404, {"error": f"no such endpoint {self.path}"})
                    return
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                    self._reply(200, server.resume(body.get("files") or {}))
                except (ResumeError, ValueError, TypeError) as exc:
                    self._reply(400, {"error": str(exc)})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    def start(self) -> ResumeServer:
        _system_thread(self.httpd.serve_forever, "fi-dist-resume-server")
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def resume(self, edits: dict[str, str]) -> dict[str, Any]:
        """Write ``edits``, publish every change since the snapshot, return what was shipped."""
        why_not = self.can_restart()
        if why_not:
            raise ResumeError(why_not)
        if not isinstance(edits, dict):
            raise ResumeError("'files' must map relative paths to file contents")
        write_files(self.root, {rel: str(text).encode() for rel, text in edits.items()})
        files = changed_files(self.root, self.before)
        gen = publish(self.store, files)
        log.warning("fi-dist: resume generation %d: shipping %d changed file(s) to every rank: %s",
                    gen, len(files), ", ".join(sorted(files)) or "(none)")
        return {"generation": gen, "files": sorted(files)}


# --- the client side of the endpoint (fi-dist resume, tests) ---------------------------------
SESSION_FILE = Path(".vscode") / "fi-dist-session.json"
"""Written by rank 0 in the source root: code-server URL/password, hub and resume endpoints."""


def read_session(path: Path | None = None) -> dict[str, Any]:
    """The session file (default ``./.vscode/fi-dist-session.json``)."""
    path = path or Path.cwd() / SESSION_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ResumeError(f"no interactive session file at {path} (is an @interactive_pytorch "
                          "task running with its source here?)") from None


def request_resume(session: dict[str, Any], files: dict[str, str] | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
    """Ask rank 0 to ship the edits and restart every rank; returns the server's answer.

    Raises:
        ResumeError: the endpoint refused (its message says why) or cannot be reached.
    """
    body = json.dumps({"files": files or {}}).encode()
    req = urllib.request.Request(session["resume_url"] + "/resume", data=body, method="POST",
                                 headers={"Authorization": f"Bearer {session['token']}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise ResumeError(f"resume refused ({exc.code}): {detail}") from None
    except OSError as exc:
        raise ResumeError(f"cannot reach the resume endpoint {session['resume_url']}: {exc}") from None


def wait_until(pred: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
