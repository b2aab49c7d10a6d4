"""The rank's stack dumper: a thread that answers a signal with every thread's stack.

How a collector (``fi-dist stacks``, the supervisor, the idle culler) gets a rank's
stacks without pausing it and while it sits in native code (a collective, a CUDA
sync):

* :data:`~fi_dist.hang.ledger.DUMP_SIGNAL` is blocked in every thread of the rank
  (the mask is set before the script starts, so torch's threads inherit it) and a
  daemon thread waits for it with ``sigtimedwait``. A collective releases the GIL
  while it waits, so this thread runs: it walks ``sys._current_frames()`` (file, line
  and function of every frame; no source is read), adds the Flight Recorder's active
  entries when torch.distributed runs, and writes ``<rank>.stacks.json`` (0600, atomic
  rename) with a serial number the collector waits for. Nothing listens on a port:
  only a process allowed to signal the rank (same user, or root) can ask, and the
  answer lands in the job's private hang directory.
* A rank whose thread cannot run (C code that holds the GIL) is asked again with
  :data:`~fi_dist.hang.ledger.FAULT_SIGNAL`: ``faulthandler``'s C handler writes every
  thread's stack into ``<rank>.fault`` from the signal itself (file, line, function;
  at most 100 frames per thread).
* Between requests the thread copies the Flight Recorder's per-group sequence numbers
  into the ledger once a second (collectives issued from C++, e.g. DDP's, become
  visible to the hang watch without asking the rank).

The signal mask is inherited by processes the rank forks (DataLoader workers unblock
it again, :func:`os.register_at_fork`) and by programs it executes; nothing sends them
this signal.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fi_dist.hang.ledger import DUMP_SIGNAL, FAULT_SIGNAL, Ledger

log = logging.getLogger("fi_dist.hang")

MAX_FRAMES = 200
"""Frames per thread in a dump (innermost kept)."""
FR_INTERVAL = 1.0
"""Seconds between two copies of the Flight Recorder's sequence numbers into the ledger."""


def stacks_answer_path(directory: Path, rank: int) -> Path:
    return directory / f"{rank}.stacks.json"


def thread_stacks(skip: int | None = None) -> list[dict[str, Any]]:
    """Every thread's stack, outermost frame first (``[file, line, function]`` each)."""
    names = {t.ident: t for t in threading.enumerate()}
    main = threading.main_thread().ident
    out = []
    for ident, frame in sys._current_frames().items():
        if ident == skip:
            continue
        frames: list[list[Any]] = []
        f: Any = frame
        while f is not None and len(frames) < MAX_FRAMES:
            code = f.f_code
            frames.append([code.co_filename, f.f_lineno, code.co_name])
            f = f.f_back
        frames.reverse()
        t = names.get(ident)
        out.append({"ident": ident, "name": t.name if t else f"thread {ident:#x}",
                    "main": ident == main, "daemon": bool(t and t.daemon), "frames": frames})
    out.sort(key=lambda t: (not t["main"], t["name"]))
    return out


def flight_recorder() -> dict[str, Any] | None:
    """The Flight Recorder's active entries and per-group status; None when off or absent.

    NCCL's recorder (CUDA builds) and the CPU one (gloo, torch >= 2.8) are both asked;
    on a CPU build without either this is None (the ledger still counts Python's calls).
    """
    dist = sys.modules.get("torch.distributed")
    try:  # (a module still being imported by the main thread has no is_initialized yet)
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return None
    except AttributeError:
        return None
    c10d = sys.modules.get("torch._C._distributed_c10d")
    out: dict[str, Any] = {}
    for name in ("_dump_nccl_trace_json", "_dump_fr_trace_json"):
        dump = getattr(c10d, name, None)
        if dump is None:
            continue
        try:
            data = json.loads(dump(True, True))  # includeCollectives, onlyActive
        except Exception as exc:  # recorder off (buffer size 0) or not built in
            out.setdefault("errors", []).append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        out.setdefault("entries", []).extend(data.get("entries") or [])
        for pg, status in (data.get("pg_status") or {}).items():
            out.setdefault("pg_status", {})[pg] = status
        for pg, config in (data.get("pg_config") or {}).items():
            out.setdefault("pg_config", {})[pg] = config
    return out or None


def fr_progress(fr: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    """(group, last enqueued, last completed, op of the last enqueued) per process group."""
    entries = fr.get("entries") or []
    names: dict[str, str] = {}
    ops: dict[tuple[str, int], str] = {}
    for e in entries:
        pg = str(e.get("pg_id", ""))
        group = e.get("process_group") or []
        names.setdefault(pg, str(group[1] if len(group) > 1 and group[1] else
                                 (group[0] if group else pg)))
        ops[(pg, int(e.get("collective_seq_id") or 0))] = str(e.get("profiling_name") or "")
    out = []
    for pg, status in sorted((fr.get("pg_status") or {}).items()):
        try:
            enq = int(status.get("last_enqueued_collective", -1))
            done = int(status.get("last_completed_collective", -1))
        except (TypeError, ValueError):
            continue
        if enq < 0:
            continue
        out.append((f"{pg}:{names.get(pg, 'pg')}", enq, max(done, 0), ops.get((pg, enq), "")))
    return out


class StackDumper:
    """Owns the rank's dump thread, its signal mask and its faulthandler registration."""

    def __init__(self, directory: Path, rank: int, ledger: Ledger | None,
                 fr_interval: float = FR_INTERVAL) -> None:
        self.directory = directory
        self.rank = rank
        self.ledger = ledger
        self.fr_interval = fr_interval
        self.serial = 0
        self._fault_fd: int | None = None
        self._thread: threading.Thread | None = None
        self._fr_lock = threading.Lock()
        self._fr_closed = False

    def install(self) -> None:
        """Block the dump signal, register faulthandler, start the thread (main thread only)."""
        # A signal reaching a thread that did not block it (one started before) must do
        # nothing rather than kill the rank (an RT signal's default action).
        signal.signal(DUMP_SIGNAL, _ignore)
        signal.pthread_sigmask(signal.SIG_BLOCK, {DUMP_SIGNAL})
        os.register_at_fork(after_in_child=_unblock)
        fault = self.directory / f"{self.rank}.fault"
        self._fault_fd = os.open(fault, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        faulthandler.register(FAULT_SIGNAL, file=self._fault_fd, all_threads=True, chain=False)
        t = threading.Thread(target=self._serve, name="fi-dist-stacks", daemon=True)
        # pydevd (--debug) must neither trace this thread nor suspend it on a pause.
        t.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
        t.pydev_do_not_trace = True  # type: ignore[attr-defined]
        t.start()
        self._thread = t
        if self.ledger is not None:
            self.ledger.set_ready()

    def _serve(self) -> None:
        while True:
            try:
                info = signal.sigtimedwait({DUMP_SIGNAL}, self.fr_interval)
            except InterruptedError:
                continue
            try:
                if info is None:
                    self._copy_flight_recorder()
                else:
                    self.answer()
            except Exception as exc:  # a failed dump must not end the thread
                log.warning("fi-dist stacks: rank %d: dump failed: %s: %s", self.rank,
                            type(exc).__name__, exc)

    def close_flight_recorder(self) -> None:
        """No more calls into torch's recorder: the script ended, the interpreter is about to
        finalize, and a dump still running in C++ then could touch torch's destroyed
        statics (a rare `terminate called` at exit was seen with the recorder asked once a
        second). Waits for a dump under way."""
        with self._fr_lock:
            self._fr_closed = True

    def _flight_recorder(self) -> dict[str, Any] | None:
        with self._fr_lock:
            return None if self._fr_closed else flight_recorder()

    def answer(self) -> Path:
        """Write this rank's stacks (and the Flight Recorder's active entries) now."""
        self.serial += 1
        fr = self._flight_recorder()
        data = {"serial": self.serial, "rank": self.rank, "pid": os.getpid(),
                "time": time.time(), "threads": thread_stacks(skip=threading.get_ident()),
                "flight_recorder": fr}
        if fr is not None:
            self._copy(fr)
        path = stacks_answer_path(self.directory, self.rank)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w") as f:  # mkstemp: 0600
                json.dump(data, f)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return path

    def _copy_flight_recorder(self) -> None:
        if self.ledger is None:
            return
        fr = self._flight_recorder()
        if fr is not None:
            self._copy(fr)

    def _copy(self, fr: dict[str, Any]) -> None:
        if self.ledger is None:
            return
        for group, enqueued, completed, op in fr_progress(fr):
            self.ledger.flight(group, enqueued, completed, op)


def _ignore(signum: int, frame: Any) -> None:
    return None


def _unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {DUMP_SIGNAL})
