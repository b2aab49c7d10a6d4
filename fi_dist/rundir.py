"""The run directory: where one local job's processes leave their state.

Layout (``.fi-dist/`` under the working directory, like torchelastic's error files)::

    .fi-dist/current            -> text file naming the newest run's id
    .fi-dist/runs/<id>/run.json        launcher pid, nodes, spec, state
    .fi-dist/runs/<id>/ranks/<r>.json  each rank's pid, node, state, exit code
    .fi-dist/runs/<id>/nodes/<k>.json  each node agent's result (per-rank failures)
    .fi-dist/runs/<id>/logs/...        per-rank stdout/stderr (torchelastic log dir)
    .fi-dist/runs/<id>/network.json    nodes' addresses, reachability, faults (local launcher)
    .fi-dist/runs/<id>/chaos.jsonl     every ``fi-dist chaos`` fault, in order

Pure file I/O shared by the in-job runtime (writes rank state) and the client side
(reads it for ``fi-dist status`` / ``preempt``). Writes are atomic (tmp + rename) so a
reader never sees half a JSON document.

Modes: ``.fi-dist/`` and every run directory are 0700 (created so; an existing one this
user owns is tightened), and ``.fi-dist/.gitignore`` (``*``) keeps it out of git: run
directories hold the job token (``debug.json``), logs and state that other users of a
shared machine must not read. Files holding a secret are written 0600 by
:func:`write_text_atomic`, which creates missing parent directories 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fi_dist.errors import NoRunningJobError

ROOT_NAME = ".fi-dist"
PRIVATE_DIR_MODE = 0o700
GITIGNORE_TEXT = "# written by fi-dist: run state, logs and the job token stay out of git\n*\n"
DEBUG_FILE = "debug.json"
"""In a run directory: the hub's attach configuration and rank port (holds the token)."""
EDITOR_FILE = "editor.json"
"""In a run directory: node 0's code-server URL and the path of its password file."""


_UPDATES = threading.Lock()
"""Serialises read-modify-writes of records within a process (a rank's heartbeat thread,
its debug agent and its main thread all update the rank's record)."""


def write_json(path: Path, data: dict[str, Any], mode: int | None = None) -> None:
    """Write ``data`` to ``path`` atomically; ``mode`` as in :func:`write_text_atomic`."""
    text = json.dumps(data, indent=2, sort_keys=True)
    if mode is not None:
        write_text_atomic(path, text, mode)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary file per thread: two threads writing into one would interleave
    # their bytes (the longer write's tail after the shorter one's end).
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` (tmp + rename), the new file having exactly ``mode``.

    For files that hold a secret (the job token): the temporary file is created 0600
    (``mkstemp``) and set to ``mode`` before a byte is written, so neither it nor the
    result is ever readable beyond ``mode``, whatever the umask or a leftover file.
    """
    if mode & 0o077:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:  # a directory made for a secret is private too (one that exists is the user's)
        make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_private_dirs(path: Path) -> Path:
    """Create ``path`` and its missing parents 0700; directories that exist are left as they are."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(d, PRIVATE_DIR_MODE)  # exact, whatever the umask
    return path


def tighten(path: Path, mode: int) -> None:
    """Clear the bits of ``path`` beyond ``mode`` when this user owns it (else leave it)."""
    st = path.stat()
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~mode:
        os.chmod(path, st.st_mode & 0o777 & mode)


def private_dir(path: Path) -> Path:
    """``path`` as a 0700 directory: created so, or tightened when this user owns it."""
    make_private_dirs(path)
    tighten(path, PRIVATE_DIR_MODE)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON document, or None if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunDir:
    """One run's directory."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def rank_file(self, rank: int) -> Path:
        return self.path / "ranks" / f"{rank}.json"

    def node_file(self, node: int) -> Path:
        return self.path / "nodes" / f"{node}.json"

    def write_run(self, data: dict[str, Any]) -> None:
        write_json(self.path / "run.json", data)

    def read_run(self) -> dict[str, Any]:
        return read_json(self.path / "run.json") or {}

    def update_run(self, **fields: Any) -> None:
        with _UPDATES:
            data = self.read_run()
            data.update(fields)
            self.write_run(data)

    def write_rank(self, rank: int, **fields: Any) -> None:
        """Merge ``fields`` into the rank's record (threads of one process: none lost)."""
        with _UPDATES:
            data = read_json(self.rank_file(rank)) or {}
            data.update(fields)
            data["updated"] = time.time()
            write_json(self.rank_file(rank), data)

    def _indexed(self, sub: str) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for f in sorted((self.path / sub).glob("*.json")):
            data = read_json(f)
            if data is not None and f.stem.isdigit():
                out[int(f.stem)] = data
        return out

    def ranks(self) -> dict[int, dict[str, Any]]:
        """Every rank's file, by global rank."""
        return self._indexed("ranks")

    def nodes(self) -> dict[int, dict[str, Any]]:
        """Every node agent's result, by node rank."""
        return self._indexed("nodes")

    def exists(self) -> bool:
        return (self.path / "run.json").is_file()

    def launcher(self) -> str:
        """The launcher that ran this run (runs before it was recorded were local)."""
        return str(self.read_run().get("launcher") or "local")

    @property
    def debug_file(self) -> Path:
        return self.path / DEBUG_FILE

    @property
    def editor_file(self) -> Path:
        """Where node 0 says where its code-server is (URL, the password file's path)."""
        return self.path / EDITOR_FILE

    def editor(self) -> dict[str, Any] | None:
        """The job's code-server (``fi-dist run --code-server``), or None."""
        return read_json(self.editor_file)

    def debug_config(self) -> dict[str, Any] | None:
        """The attach configuration the job's hub published, or None before it is up."""
        data = read_json(self.debug_file)
        return data.get("config") if data else None

    def idle_file(self, node: int) -> Path:
        """Where node ``node``'s idle culler leaves its last sample."""
        return self.path / "nodes" / f"{node}.idle.json"

    def node_idle(self) -> dict[int, dict[str, Any]]:
        """Every node's last idle state: {node: {"phase": ..., "idle_for": ..., ...}}."""
        out: dict[int, dict[str, Any]] = {}
        for f in sorted((self.path / "nodes").glob("*.idle.json")):
            stem = f.name.split(".", 1)[0]
            data = read_json(f)
            if data is not None and stem.isdigit():
                out[int(stem)] = data
        return out

    def record_preemption(self, node: int, grace: float) -> None:
        """Note that ``node`` was preempted now (the root cause the summary reports)."""
        write_json(self.path / "events" / f"preempt-{node}.json",
                   {"node": node, "time": time.time(), "grace": grace})

    def preemptions(self) -> list[dict[str, Any]]:
        found = (read_json(f) for f in sorted((self.path / "events").glob("preempt-*.json")))
        return [p for p in found if p is not None]

    def record_node_lost(self, node: int, last_seen: float, silent_for: float) -> None:
        """Note that ``node`` was lost: silent since ``last_seen`` (wall clock)."""
        write_json(self.path / "events" / f"lost-{node}.json",
                   {"node": node, "time": last_seen, "silent_for": silent_for})

    def lost_nodes(self) -> list[dict[str, Any]]:
        found = (read_json(f) for f in sorted((self.path / "events").glob("lost-*.json")))
        return [p for p in found if p is not None]

    @property
    def network_file(self) -> Path:
        """The launcher's view of the nodes' network (mode, addresses, reachability, faults)."""
        return self.path / "network.json"

    def network(self) -> dict[str, Any]:
        return read_json(self.network_file) or {}

    def record_fault(self, entry: dict[str, Any]) -> None:
        """Append one ``fi-dist chaos`` fault to ``chaos.jsonl`` (kept across attempts)."""
        with (self.path / "chaos.jsonl").open("a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def faults(self) -> list[dict[str, Any]]:
        try:
            text = (self.path / "chaos.jsonl").read_text()
        except OSError:
            return []
        return [json.loads(x) for x in text.splitlines() if x.strip()]
    def record_hang(self, data: dict[str, Any]) -> None:
        """The hang watch's capture of this attempt (the summary's root cause candidate)."""
        write_json(self.path / "events" / "hang.json", data)

    def hang_report(self) -> dict[str, Any] | None:
        return read_json(self.path / "events" / "hang.json")

    def clear_attempt_state(self) -> None:
        """Forget rank and node results, events and the ranks' hang ledgers and dumps before
        a restart of the whole job (a dead rank's ledger still shows where it failed)."""
        for sub, pattern in (("ranks", "*.json"), ("nodes", "*.json"), ("events", "*.json"),
                             ("hang", "*.ledger"), ("hang", "*.stacks.json"),
                             ("hang", "*.fault")):
            for f in (self.path / sub).glob(pattern):
                f.unlink(missing_ok=True)


def root(cwd: Path | None = None) -> Path:
    return (cwd or Path.cwd()) / ROOT_NAME


def ensure_root(cwd: Path | None = None) -> Path:
    """``.fi-dist/`` under ``cwd``, 0700, with a ``.gitignore`` that ignores all of it."""
    base = private_dir(root(cwd))
    ignore = base / ".gitignore"
    if not ignore.exists():
        write_text_atomic(ignore, GITIGNORE_TEXT, 0o644)
    return base


def create_run(cwd: Path | None = None) -> RunDir:
    """Make a new run directory (0700) and mark it current."""
    base = ensure_root(cwd)
    runs = private_dir(base / "runs")
    run = RunDir(runs / new_run_id())
    run.path.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(run.path, PRIVATE_DIR_MODE)
    (base / "current").write_text(run.run_id)
    return run


def current_run(cwd: Path | None = None, require_alive: bool = True) -> RunDir:
    """The newest run under ``cwd``; with ``require_alive``, its launcher must be running.

    Raises:
        NoRunningJobError: no run directory, or its launcher has exited.
    """
    base = root(cwd)
    try:
        run_id = (base / "current").read_text().strip()
    except OSError:
        raise NoRunningJobError(
            f"no fi-dist run found under {base} (start one with `fi-dist run`)"
        ) from None
    run = RunDir(base / "runs" / run_id)
    info = run.read_run()
    if require_alive:
        pid = info.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid) or info.get("state") == "finished":
            raise NoRunningJobError(f"the newest run {run_id} under {base} is not running")
    return run
