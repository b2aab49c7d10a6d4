"""Resume with edited code: ship changed source files to every rank, then restart the ranks.

The user edits the task's source on rank 0 (in code-server) and triggers resume (the
``fi-dist: resume all ranks`` launch configuration, ``fi-dist resume``, or
:func:`request_resume`). Then:

1. rank 0 of node 0's :class:`ResumeServer` (127.0.0.1, ``Authorization: Bearer <job
   token>``) writes the files the request carries, diffs the source root against the
   snapshot taken when the task started and publishes the changed files as one
   *generation* in the job's rendezvous store (torchelastic's agent store: every rank of
   every node reaches it, nodes share no filesystem), signed with the job token
   (:mod:`fi_dist.runtime.generation`);
2. every rank's :class:`Watcher` (a thread the debugger never pauses) verifies the
   generation's signature, writes the files into its own source root and ends its
   process with :data:`RESUME_EXIT_CODE`, whatever the main thread is doing (stopped
   post-mortem, blocked in a collective waiting for the failed rank, still computing);
   a generation that does not verify is refused with a log line and nothing written;
3. torchelastic restarts the worker group (``max_restarts``): fresh processes import the
   edited modules, the decorator reloads the task function from its file, and the
   training function re-enters from the last checkpoint.

Only source files under the root are shipped or written (:func:`check_source_path`:
:data:`SHIPPED_SUFFIXES`, not under :data:`SKIPPED_DIRS` or any dot-directory, at most
:data:`MAX_FILE` bytes); paths are relative and may not leave the root.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

from fi_dist.runtime import generation
from fi_dist.runtime.boundedhttp import BoundedHandler, BoundedHTTPServer, QuietLog
from fi_dist.runtime.generation import GenerationRefused, Scope

log = logging.getLogger("fi_dist.resume")

RESUME_EXIT_CODE = 198
"""A rank that ends for a resume exits with this (>= 128: retryable for fi-dist's launchers)."""
SHIPPED_SUFFIXES = (".py", ".pyi", ".yaml", ".yml", ".toml", ".cfg", ".ini")
"""Which files under the source root count as source (code and config; not the JSON,
text and data a running job writes next to its code)."""
SKIPPED_DIRS = {"__pycache__", "node_modules", ".git", ".vscode", ".fi-dist", ".tools",
                ".venv", "venv"}
"""Never shipped or written (nor is any other name starting with a dot)."""
MAX_FILE = 1 << 20
"""Bytes: a bigger file is data, not source, and is not shipped."""
MAX_FILES = 5000
MAX_BODY = 16 << 20
"""Bytes of an authenticated resume request; the unauthenticated get none read."""
WATCH_BACK = 16
"""Generations a watcher looks back from the newest number (a forged bump hides none)."""


class ResumeError(RuntimeError):
    """A resume request that cannot be served (bad path, no restarts left, no session)."""


# --- the source tree ----------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _skipped(name: str) -> bool:
    return name in SKIPPED_DIRS or name.startswith(".")


def source_files(root: Path) -> dict[str, Path]:
    """Relative path -> file for every shipped source file under ``root``."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        for name in sorted(filenames):
            if not name.endswith(SHIPPED_SUFFIXES) or _skipped(name):
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


def check_source_path(root: Path, rel: str) -> Path:
    """``root/rel`` if resume may write it: inside the root (symlinks resolved), a
    :data:`SHIPPED_SUFFIXES` file, under no skipped or dot-directory.

    Raises:
        ResumeError: naming the path and the rule it breaks.
    """
    target = safe_path(root, rel)
    parts = target.relative_to(root.resolve()).parts
    if not parts or not parts[-1].endswith(SHIPPED_SUFFIXES):
        raise ResumeError(f"source path {rel!r}: resume ships only "
                          f"{' '.join(SHIPPED_SUFFIXES)} files")
    if bad := [p for p in parts if _skipped(p)]:
        raise ResumeError(f"source path {rel!r} is in {bad[0]!r}: resume never writes "
                          "under dot-directories or " + ", ".join(sorted(SKIPPED_DIRS)))
    return target


def write_files(root: Path, files: dict[str, bytes]) -> list[str]:
    """Write ``files`` under ``root`` atomically; returns the paths whose content changed.

    Every path and size is checked before the first byte is written: one bad entry and
    nothing is.

    Raises:
        ResumeError: a path :func:`check_source_path` refuses, or a file over MAX_FILE.
    """
    if len(files) > MAX_FILES:
        raise ResumeError(f"{len(files)} files: at most {MAX_FILES} are shipped")
    targets = {}
    for rel, data in sorted(files.items()):
        targets[rel] = check_source_path(root, rel)
        if len(data) > MAX_FILE:
            raise ResumeError(f"source path {rel!r}: {len(data)} bytes, over {MAX_FILE}")
    written = []
    for rel, target in targets.items():
        data = files[rel]
        if target.is_file() and target.read_bytes() == data:
            continue  # another rank of this node got there first (shared filesystem)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.fi-dist-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written.append(rel)
    return written


def _system_thread(target: Callable[[], None], name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.pydev_do_not_trace = True  # type: ignore[attr-defined]  # never paused by "pause all"
    t.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    t.start()
    return t


# --- every rank: the watcher --------------------------------------------------------------
class Watcher:
    """Every rank: waits for a new signed generation, applies it, then calls ``on_resume``.

    Generations on the store before the watcher starts belong to an earlier attempt and
    are never applied. A generation that does not verify (:func:`generation.verify`) is
    refused with one log line naming the rank and the reason, nothing is written, and
    the watcher goes on waiting for a real one.
    """

    def __init__(self, store: Any, root: Path, token: str, scope: Scope,
                 on_resume: Callable[[int, list[str]], None], interval: float = 0.2,
                 label: str = "this rank") -> None:
        self.store, self.root, self.token, self.scope = store, root, token, scope
        self.on_resume = on_resume
        self.interval = interval
        self.label = label
        self.seen = generation.latest(store)  # generations before this attempt: not ours
        self.not_before = time.time() - generation.CLOCK_SKEW
        self.refused: list[tuple[int, str]] = []
        self._stop = threading.Event()

    def start(self) -> Watcher:
        _system_thread(self._run, "fi-dist-resume-watch")
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> tuple[int, list[str]] | None:
        """Apply the newest valid new generation: (number, files written), or None."""
        newest = generation.latest(self.store)
        if newest <= self.seen:
            return None
        for gen in range(newest, max(self.seen, newest - WATCH_BACK), -1):
            raw = generation.payload(self.store, gen)
            try:
                if raw is None:
                    raise GenerationRefused("announced with no payload on the store")
                files = generation.verify(raw, self.token, self.scope, gen, self.not_before)
                written = write_files(self.root, files)
            except (GenerationRefused, ResumeError) as exc:
                self.refused.append((gen, str(exc)))
                log.error("fi-dist: %s: resume generation %d REFUSED, nothing written: %s",
                          self.label, gen, exc)
                continue
            self.seen = newest
            return gen, written
        self.seen = newest
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                applied = self.poll()
            except Exception as exc:  # the store is gone with the job: nothing to resume
                log.debug("resume watcher: %s", exc)
                if self._stop.wait(1.0):
                    return
                continue
            if applied is not None:
                self.on_resume(*applied)
                return


# --- the endpoint on rank 0 of node 0 ---------------------------------------------------------
def bearer_ok(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` with this token (constant-time compare)."""
    scheme, _, given = (header or "").strip().partition(" ")
    ok = hmac.compare_digest(given.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and ok


class _Handler(BoundedHandler):
    server: _Server
    server_version = "fi-dist-resume"

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="fi-dist"')
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if bearer_ok(self.headers.get("Authorization"), self.server.resume.token):
            return True
        self.server.unauthorized.note(f"{self.client_address[0]} {self.command} {self.path}")
        self._reply(401, {"error": "missing or wrong job token (send 'Authorization: "
                                   "Bearer <token>')"})
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        if self.path != "/status":
            self._reply(404, {"error": f"no such endpoint {self.path}"})
            return
        srv = self.server.resume
        self._reply(200, {"generation": generation.latest(srv.store), **srv.status()})

    def do_POST(self) -> None:
        if not self._authorized():
            return  # its body is never read
        if self.path != "/resume":
            self._reply(404, {"error": f"no such endpoint {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._reply(400, {"error": "bad Content-Length"})
            return
        if not 0 <= length <= MAX_BODY:
            self._reply(413, {"error": f"a resume request carries at most {MAX_BODY} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length)) if length else {}
            if not isinstance(body, dict):
                raise ResumeError("the request body must be a JSON object")
            self._reply(200, self.server.resume.resume(body.get("files") or {}))
        except (ResumeError, ValueError, TypeError) as exc:
            self._reply(400, {"error": str(exc)})

    def _not_allowed(self) -> None:
        if self._authorized():
            self._reply(405, {"error": f"{self.command} is not served here"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _not_allowed


class _Server(BoundedHTTPServer):
    resume: ResumeServer
    unauthorized: QuietLog


class ResumeServer:
    """HTTP on 127.0.0.1: ``POST /resume`` (optional ``{"files": {path: text}}``), ``GET /status``.

    Every request carries ``Authorization: Bearer <job token>`` (a bare token is
    refused), compared in constant time, within ``head_deadline`` seconds of connecting;
    threads, waiting connections and log lines are bounded (:mod:`boundedhttp`).
    """

    def __init__(self, store: Any, root: Path, token: str, scope: Scope,
                 before: dict[str, str], can_restart: Callable[[], str | None],
                 host: str = "127.0.0.1", port: int = 0,
                 status: Callable[[], dict[str, Any]] | None = None,
                 **limits: Any) -> None:
        if not token:
            raise ResumeError("the resume endpoint needs the job token")
        self.store, self.root, self.token, self.scope = store, root, token, scope
        self.before = before
        self.can_restart = can_restart
        self.status = status or (lambda: {})
        self._lock = threading.Lock()
        self.httpd = _Server((host, port), _Handler, log, name="fi-dist-resume", **limits)
        self.httpd.resume = self
        self.httpd.unauthorized = QuietLog(log, "request(s) without the job token refused",
                                           logging.WARNING)
        self.url = f"http://{host}:{self.httpd.server_address[1]}"

    def start(self) -> ResumeServer:
        self.httpd.start(spawn=_system_thread)
        return self

    def close(self) -> None:
        self.httpd.close()
        self.httpd.unauthorized.flush()

    def resume(self, edits: dict[str, str]) -> dict[str, Any]:
        """Write ``edits``, publish every change since the snapshot, return what was shipped.

        Raises:
            ResumeError: no restart left, or an edit that is not an allowed source file
                (nothing is written then).
        """
        why_not = self.can_restart()
        if why_not:
            raise ResumeError(why_not)
        if not isinstance(edits, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in edits.items()):
            raise ResumeError("'files' must map relative paths to file contents (text)")
        with self._lock:
            write_files(self.root, {rel: text.encode() for rel, text in edits.items()})
            files = changed_files(self.root, self.before)
            gen = generation.publish(self.store, self.token, self.scope, files)
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
