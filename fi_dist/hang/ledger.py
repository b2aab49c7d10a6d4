"""Each rank's collective ledger: a memory-mapped file the client reads without the rank.

Layout of ``<hang dir>/<rank>.ledger`` (little-endian, fixed size): a header (who the
rank is, its pid and process start time, its main thread, whether its dump thread is
ready, how it ended) and :data:`NSLOTS` slots. A slot is one process group's count of
collectives: from the Python wrapper (``kind`` python: issued, completed, the op, the
call site and the time of the last one, an error if one raised) or from torch's Flight
Recorder (``kind`` flight recorder: the C++ side's last enqueued / completed sequence
numbers, which also count collectives Python never sees, such as DDP's).

The rank writes with plain stores into the mapping (no system call on the training
path); every record is guarded by a sequence counter (odd while being written) so a
reader retries instead of seeing half a record. Readers need nothing from the rank:
the file is readable while the rank is stuck in native code, and after it died.

Also here: where a job's hang directory is, and the two signals a collector sends.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fi_dist.rundir import PRIVATE_DIR_MODE, make_private_dirs

MAGIC = b"FIDLEDG1"
NSLOTS = 32
"""Process groups tracked per rank (the last slot takes every group beyond)."""
SLOT_SIZE = 512
DUMP_SIGNAL = signal.SIGRTMIN + 11
"""Wakes the rank's dump thread (blocked in every other thread; sigwait'ed there)."""
FAULT_SIGNAL = signal.SIGRTMIN + 12
"""faulthandler's dump of every thread: for a rank whose dump thread cannot run."""

KIND_EMPTY, KIND_PYTHON, KIND_FR = 0, 1, 2
KIND_NAMES = {KIND_PYTHON: "python", KIND_FR: "flight recorder"}
STATE_RUNNING, STATE_EXITED, STATE_FAILED = 0, 1, 2

# magic, gen, pid, rank, node, local_rank, world, start_ticks, main_ident, ready, state,
# exitcode, inits, started, updated
_HEADER = struct.Struct("<8sQIiiiiQQBBxxiQdd")
_HEADER_SIZE = 256
_GEN = struct.Struct("<Q")
# kind, failed, line, issued, t_issue, completed, t_done, t_fail, op, file, func
_BODY = struct.Struct("<BBxxIQdQdd32s160s64s")
_NUMS = struct.Struct("<BBxxIQdQdd")  # the numbers of _BODY: rewritten on every call
_STRS = struct.Struct("<32s160s64s")  # its strings: rewritten only when they change
_DONE = struct.Struct("<Qd")
_DONE_OFFSET = 8 + 1 + 1 + 2 + 4 + 8 + 8  # gen + kind..t_issue
_NAME = struct.Struct("<48s")
_ERROR = struct.Struct("<96s")
_NAME_OFFSET = 8 + _BODY.size
_ERROR_OFFSET = _NAME_OFFSET + _NAME.size
FILE_SIZE = _HEADER_SIZE + NSLOTS * SLOT_SIZE
assert _ERROR_OFFSET + _ERROR.size <= SLOT_SIZE


def hang_dir(run_dir: str | None, run_id: str = "") -> Path:
    """Where a node's ranks keep their ledgers and dumps.

    ``<run dir>/hang`` when the job has a run directory (local, Ray); otherwise (a pod)
    a private directory under the temporary directory, named by the run id, which the
    ranks and an in-pod collector compute alike from the same environment.
    """
    if run_dir:
        return Path(run_dir) / "hang"
    return Path(tempfile.gettempdir()) / f"fi-dist-{os.geteuid()}" / (run_id or "job") / "hang"


def ensure_hang_dir(path: Path) -> Path:
    """``path`` as a private (0700) directory owned by this user.

    Raises:
        PermissionError: it (or its parent under the temporary directory) belongs to
            someone else or is open to others: dumps reveal the job's state.
    """
    make_private_dirs(path)
    for d in (path, path.parent):
        st = d.lstat()
        if st.st_uid != os.geteuid() or (d == path and st.st_mode & 0o077):
            if d == path and st.st_uid == os.geteuid():
                os.chmod(d, PRIVATE_DIR_MODE)
                continue
            raise PermissionError(f"{d} is not a private directory of this user")
    return path


def ledger_path(directory: Path, rank: int) -> Path:
    return directory / f"{rank}.ledger"


def process_start_ticks(pid: int) -> int:
    """The process's start time in clock ticks (``/proc/PID/stat`` field 22); 0 if unknown.

    With the pid it names one process for good: a recycled pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[-1].split()[19])


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def _fit(text: str, size: int) -> bytes:
    raw = text.encode(errors="replace")
    return raw if len(raw) <= size else b"..." + raw[-(size - 3):]


class Ledger:
    """The writer (one per rank process). Not thread-safe per slot: callers serialise."""

    def __init__(self, path: Path, rank: int, node: int, local_rank: int, world: int,
                 main_ident: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, FILE_SIZE)
            self.mm = mmap.mmap(fd, FILE_SIZE)
        finally:
            os.close(fd)
        self.path = path
        self._slots: dict[str, int] = {}
        self._alloc = threading.Lock()  # the dump thread adds Flight Recorder slots
        self._gens: dict[int, int] = {}
        """Each slot's sequence counter (even: consistent), as last written here."""
        self._strings: dict[int, tuple[bytes, bytes, bytes]] = {}
        self._who = (os.getpid(), rank, node, local_rank, world,
                     process_start_ticks(os.getpid()), main_ident)
        self._gen = 0
        self._ready = 0
        self._state = STATE_RUNNING
        self._exitcode = 0
        self._inits = 0
        self._started = time.time()
        self._write_header()

    # --- header --------------------------------------------------------------------
    def _write_header(self) -> None:
        _GEN.pack_into(self.mm, 8, self._gen + 1)  # odd: being written
        self._gen += 2
        _HEADER.pack_into(self.mm, 0, MAGIC, self._gen, *self._who, self._ready, self._state,
                          self._exitcode, self._inits, self._started, time.time())

    def set_ready(self, ready: bool = True) -> None:
        """The rank's dump thread is listening (a collector may signal it now)."""
        self._ready = int(ready)
        self._write_header()

    def initialised(self) -> None:
        """A process group was initialised: counts as progress for the hang watch."""
        self._inits += 1
        self._write_header()

    def ended(self, exitcode: int, failed: bool) -> None:
        self._ready = 0
        self._state = STATE_FAILED if failed else STATE_EXITED
        self._exitcode = exitcode
        self._write_header()

    # --- slots ---------------------------------------------------------------------
    def slot(self, group: str, kind: int = KIND_PYTHON) -> int:
        """The offset of ``group``'s slot (allocated on first use)."""
        key = f"{kind}:{group}"
        off = self._slots.get(key)
        if off is not None:
            return off
        with self._alloc:
            return self._allocate(key, group, kind)

    def _allocate(self, key: str, group: str, kind: int) -> int:
        if (off := self._slots.get(key)) is not None:
            return off
        index = len(set(self._slots.values()))
        if index >= NSLOTS - 1:  # the last slot takes every group beyond
            off = _HEADER_SIZE + (NSLOTS - 1) * SLOT_SIZE
            shared = off in self._slots.values()
            self._slots[key] = off
            if shared:
                return off
            group = "(other groups)"
        else:
            off = _HEADER_SIZE + index * SLOT_SIZE
            self._slots[key] = off
        _NAME.pack_into(self.mm, off + _NAME_OFFSET, _fit(group, 48))
        self._body(off, kind, 0, 0, 0, 0.0, 0, 0.0, 0.0, b"", b"", b"")
        return off

    def _body(self, off: int, *values: object) -> None:
        mm = self.mm
        gen = self._gens.get(off, 0) | 1
        _GEN.pack_into(mm, off, gen)
        _BODY.pack_into(mm, off + 8, *values)
        self._strings.pop(off, None)
        self._gens[off] = gen + 1
        _GEN.pack_into(mm, off, gen + 1)

    def issue(self, off: int, seq: int, completed: int, op: bytes, file: bytes, line: int,
              func: bytes) -> None:
        """Collective ``seq`` of the slot's group started (``completed`` before it).

        The training path: one or two stores into the mapping, no read back (the slot's
        sequence counter and strings are remembered here).
        """
        mm = self.mm
        gen = self._gens.get(off, 0) | 1
        _GEN.pack_into(mm, off, gen)
        strings = (op, file, func)
        if self._strings.get(off) != strings:
            _STRS.pack_into(mm, off + 8 + _NUMS.size, op, file, func)
            self._strings[off] = strings
        _NUMS.pack_into(mm, off + 8, KIND_PYTHON, 0, line, seq, time.time(), completed, 0.0, 0.0)
        self._gens[off] = gen + 1
        _GEN.pack_into(mm, off, gen + 1)

    def complete(self, off: int, seq: int) -> None:
        mm = self.mm
        gen = self._gens.get(off, 0) | 1
        _GEN.pack_into(mm, off, gen)
        _DONE.pack_into(mm, off + _DONE_OFFSET, seq, time.time())
        self._gens[off] = gen + 1
        _GEN.pack_into(mm, off, gen + 1)

    def fail(self, off: int, error: str) -> None:
        """The slot's last collective raised (a timeout, a peer gone): kept for the watch."""
        mm = self.mm
        gen = self._gens.get(off, 0) | 1
        _GEN.pack_into(mm, off, gen)
        body = list(_BODY.unpack_from(mm, off + 8))
        body[1], body[7] = 1, time.time()
        _BODY.pack_into(mm, off + 8, *body)
        self._strings.pop(off, None)
        _ERROR.pack_into(mm, off + _ERROR_OFFSET, _fit(error, 96))
        self._gens[off] = gen + 1
        _GEN.pack_into(mm, off, gen + 1)

    def flight(self, group: str, enqueued: int, completed: int, op: str) -> None:
        """The Flight Recorder's view of one process group (C++-side sequence numbers)."""
        off = self.slot(group, KIND_FR)
        body = _BODY.unpack_from(self.mm, off + 8)
        if body[3] == enqueued and body[5] == completed:
            return
        now = time.time()
        t_issue = body[4] if body[3] == enqueued else now
        self._body(off, KIND_FR, 0, 0, enqueued, t_issue, completed,
                   now if completed != body[5] else body[6], 0.0, _fit(op, 32), b"", b"")

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self.mm.close()


# --- reading -------------------------------------------------------------------------
@dataclass(frozen=True)
class SlotSnapshot:
    """One process group's collectives as one rank recorded them."""

    group: str
    kind: str
    """``python`` (fi-dist's wrapper) or ``flight recorder`` (torch's C++ side)."""
    issued: int
    completed: int
    op: str
    """The last issued collective (``all_reduce``; ``gloo:all_reduce`` from the recorder)."""
    file: str
    line: int
    func: str
    """Where the last collective was called (python slots only)."""
    issued_at: float
    completed_at: float
    failed: bool = False
    error: str = ""
    failed_at: float = 0.0

    @property
    def in_flight(self) -> bool:
        return self.issued > self.completed

    @property
    def site(self) -> str:
        if not self.file:
            return ""
        return f"{os.path.basename(self.file)}:{self.line} in {self.func}"


@dataclass(frozen=True)
class LedgerSnapshot:
    """One rank's ledger as read at one moment."""

    rank: int
    node: int
    local_rank: int
    world: int
    pid: int
    start_ticks: int
    main_ident: int
    ready: bool
    state: int
    exitcode: int
    inits: int
    started: float
    updated: float
    slots: list[SlotSnapshot] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        """The rank's process still runs (same pid *and* start time; not a zombie)."""
        if self.state != STATE_RUNNING:
            return False
        ticks = process_start_ticks(self.pid)
        if not ticks or ticks != self.start_ticks:
            return False
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")

    def progress_key(self) -> tuple[int, ...]:
        """Changes whenever the rank makes progress (a group initialised, a collective done)."""
        return (self.inits, *(s.completed for s in self.slots))

    @property
    def state_text(self) -> str:
        if self.state == STATE_EXITED:
            return f"exited {self.exitcode}"
        if self.state == STATE_FAILED:
            return f"failed (exit {self.exitcode})"
        return "running"


def _read_slot(raw: bytes, off: int) -> SlotSnapshot | None:
    body = _BODY.unpack_from(raw, off + 8)
    kind = body[0]
    if kind == KIND_EMPTY:
        return None
    (_, failed, line, issued, t_issue, completed, t_done, t_fail, op, file, func) = body
    return SlotSnapshot(
        group=_text(_NAME.unpack_from(raw, off + _NAME_OFFSET)[0]),
        kind=KIND_NAMES.get(kind, "?"), issued=issued, completed=completed, op=_text(op),
        file=_text(file), line=line, func=_text(func), issued_at=t_issue,
        completed_at=t_done, failed=bool(failed),
        error=_text(_ERROR.unpack_from(raw, off + _ERROR_OFFSET)[0]) if failed else "",
        failed_at=t_fail)


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(FILE_SIZE)


def _gens(raw: bytes) -> list[int]:
    return [_GEN.unpack_from(raw, 8)[0],
            *(_GEN.unpack_from(raw, _HEADER_SIZE + i * SLOT_SIZE)[0] for i in range(NSLOTS))]


def read_ledger(path: Path, tries: int = 20) -> LedgerSnapshot | None:
    """One rank's ledger, or None when the file is missing or not a ledger.

    A seqlock read: the file is read twice, and a record counts only when its sequence
    counter is even and the same in both reads (the second read comes after the
    first's data); otherwise both are read again (up to ``tries`` times).
    """
    try:
        raw = _read(path)
        for _ in range(tries):
            again = _read(path)
            gens = _gens(raw) if len(raw) == FILE_SIZE else []
            if gens and gens == _gens(again) and not any(g & 1 for g in gens):
                break
            time.sleep(0.0005)
            raw = again
    except OSError:
        return None
    if len(raw) < FILE_SIZE or raw[:8] != MAGIC:
        return None
    slots = [s for i in range(NSLOTS)
             if (s := _read_slot(raw, _HEADER_SIZE + i * SLOT_SIZE)) is not None]
    (_, _, pid, rank, node, local_rank, world, ticks, main_ident, ready, state, exitcode,
     inits, started, updated) = _HEADER.unpack_from(raw, 0)
    return LedgerSnapshot(rank=rank, node=node, local_rank=local_rank, world=world, pid=pid,
                          start_ticks=ticks, main_ident=main_ident, ready=bool(ready),
                          state=state, exitcode=exitcode, inits=inits, started=started,
                          updated=updated, slots=slots)


def read_ledgers(directory: Path) -> dict[int, LedgerSnapshot]:
    """Every rank's ledger in ``directory``, by rank."""
    out: dict[int, LedgerSnapshot] = {}
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return out
    for name in names:
        stem, _, ext = name.partition(".")
        if ext == "ledger" and stem.isdigit():
            snap = read_ledger(directory / name)
            if snap is not None:
                out[snap.rank] = snap
    return out
