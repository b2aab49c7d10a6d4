"""Writing one checkpoint: every rank writes its files, the coordinator commits.

The protocol (the same for a synchronous and a background save):

1. every rank writes its files into the save's directory (a temporary directory on a
   local file system), several at once on a small bounded pool, each fsync'd and hashed
   as it is written (tensor bytes go from their memory to the kernel, see tensorfile);
2. every rank publishes ``{file: size, checksum}`` (or its error) under the save's key
   in the c10d store (a plain dict in a single process): no collective, so this
   works from a background thread while the loop runs its own collectives;
3. the coordinator (rank 0) waits for all parts, writes the manifest LAST, fsyncs and
   renames the directory into place, applies ``keep_last``, and publishes the outcome;
4. a rank that must not exit before the commit (preemption, end of training) waits
   for that outcome.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fi_dist.runtime.checkpoint import layout, tensorfile
from fi_dist.runtime.checkpoint.progress import Meter
from fi_dist.runtime.checkpoint.storage import Storage

log = logging.getLogger("fi_dist.checkpoint")


@dataclass
class SavePlan:
    """One rank's part of one save."""

    step: int
    rank: int
    world_size: int
    nonce: str
    workdir: str
    """Where the files go: a temporary directory, or the final one on object stores."""
    final: str
    files: dict[str, Any]
    """File name (relative to ``workdir``) -> host-memory state for a tensor file."""
    mode: str = "replicated"
    meta: dict[str, Any] = field(default_factory=dict)
    prefix: str = ""
    """Subdirectory of ``final`` the files live in on object stores (see layout)."""
    threads: int = 1
    """Files written at once (each also has a hashing helper)."""


class PartExchange:
    """Parts and outcomes of saves, through the c10d store or (one process) a dict."""

    def __init__(self, store: Any = None, timeout: float = 600.0) -> None:
        self.store = store
        self.timeout = timeout
        self._local: dict[str, str] = {}
        self._cond = threading.Condition()

    def set(self, key: str, value: str) -> None:
        if self.store is not None:
            self.store.set(key, value)
            return
        with self._cond:
            self._local[key] = value
            self._cond.notify_all()

    def get(self, key: str, timeout: float | None = None) -> str:
        timeout = self.timeout if timeout is None else timeout
        if self.store is not None:
            deadline = time.monotonic() + timeout
            # Poll instead of store.wait(): wait() changes the store's global timeout. The
            # wait starts short (the peers usually finish within a millisecond or two of
            # each other: a fixed 10 ms step cost every save up to 10 ms) and backs off.
            pause = 0.0005
            while not self.store.check([key]):
                if time.monotonic() > deadline:
                    raise layout.CheckpointError(f"timed out after {timeout:g}s waiting for {key}")
                time.sleep(pause)
                pause = min(pause * 2, 0.01)
            return self.store.get(key).decode()
        with self._cond:
            if not self._cond.wait_for(lambda: key in self._local, timeout):
                raise layout.CheckpointError(f"timed out after {timeout:g}s waiting for {key}")
            return self._local[key]


def part_key(nonce: str, step: int, rank: int) -> str:
    return f"ckpt/{nonce}/{step}/part/{rank}"


def done_key(nonce: str, step: int) -> str:
    return f"ckpt/{nonce}/{step}/done"


def write_files(storage: Storage, plan: SavePlan) -> dict[str, layout.FileEntry]:
    """Write this rank's files (largest first, ``plan.threads`` at a time); their entries."""
    prepared = {name: tensorfile.Prepared(obj) for name, obj in plan.files.items()}
    meter = Meter("save", plan.step, sum(p.size for p in prepared.values()), plan.rank)

    # Each file's fsync runs on its own helper while the next file is written.
    syncer = ThreadPoolExecutor(len(prepared) or 1, thread_name_prefix="fi-dist-fsync")
    syncs: list[Future[None]] = []

    def write_one(name: str) -> tuple[str, layout.FileEntry]:
        rel = f"{plan.prefix}{name}"
        path = f"{plan.workdir}/{rel}"
        with storage.open_write(path, on_bytes=meter.add, durable=False) as w:
            prepared[name].write_to(w)
        syncs.append(syncer.submit(storage.sync_file, path))
        return rel, layout.FileEntry(w.size, w.hexdigest)

    order = sorted(prepared, key=lambda n: prepared[n].size, reverse=True)
    try:
        if plan.threads > 1 and len(order) > 1:
            with ThreadPoolExecutor(min(plan.threads, len(order)),
                                    thread_name_prefix="fi-dist-write") as pool:
                entries = dict(pool.map(write_one, order))
        else:
            entries = dict(map(write_one, order))
        for fut in syncs:
            fut.result()
    finally:
        syncer.shutdown(wait=True)
    meter.finish()
    return entries


def run_save(storage: Storage, exchange: PartExchange, plan: SavePlan,
             retention: Callable[[], None] | None = None,
             alongside: Callable[[], dict[str, layout.FileEntry]] | None = None) -> None:
    """Steps 1-3 of the protocol for this rank; raises what went wrong here.

    Args:
        alongside: more files to write on this thread while the plan's files are written
            on a helper (DCP's collective save); returns their manifest entries.
    """
    try:
        if alongside is None:
            written = write_files(storage, plan)
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="fi-dist-write") as pool:
                own = pool.submit(write_files, storage, plan)
                written = {**alongside(), **own.result()}
        part: dict[str, Any] = {k: e.to_json() for k, e in written.items()}
    except BaseException as exc:
        exchange.set(part_key(plan.nonce, plan.step, plan.rank),
                     json.dumps({"__error__": f"rank {plan.rank}: {type(exc).__name__}: {exc}"}))
        raise
    exchange.set(part_key(plan.nonce, plan.step, plan.rank), json.dumps(part))
    if plan.rank == 0:
        commit(storage, exchange, plan, retention)


def commit(storage: Storage, exchange: PartExchange, plan: SavePlan,
           retention: Callable[[], None] | None) -> None:
    key = done_key(plan.nonce, plan.step)
    try:
        files: dict[str, layout.FileEntry] = {}
        for r in range(plan.world_size):
            part = json.loads(exchange.get(part_key(plan.nonce, plan.step, r)))
            if "__error__" in part:
                raise layout.CheckpointError(f"step {plan.step} not committed: {part['__error__']}")
            files.update({k: layout.FileEntry.from_json(v) for k, v in part.items()})
        manifest = layout.Manifest(step=plan.step, world_size=plan.world_size, mode=plan.mode,
                                   files=files, meta=plan.meta)
        data = manifest.to_bytes()
        if storage.atomic_rename:
            storage.write_bytes(f"{plan.workdir}/{layout.MANIFEST}", data)
            if storage.exists(plan.final):
                layout.remove(storage, plan.final)  # an older, invalid save of the same step
            storage.rename_dir(plan.workdir, plan.final)
        else:
            # No rename on object stores: one PUT of the manifest is the commit.
            storage.write_bytes(f"{plan.final}/{layout.MANIFEST}", data)
    except BaseException as exc:
        exchange.set(key, f"error: {exc}")
        raise
    exchange.set(key, "ok")
    if retention is not None:
        try:
            retention()
        except Exception as exc:  # never fail a committed save over cleanup
            log.warning("checkpoint retention failed: %s", exc)


def wait_committed(exchange: PartExchange, nonce: str, step: int, timeout: float) -> None:
    """Block until the coordinator committed ``step``.

    Raises:
        CheckpointError: the commit failed, or did not happen within ``timeout``.
    """
    outcome = exchange.get(done_key(nonce, step), timeout)
    if outcome != "ok":
        raise layout.CheckpointError(f"checkpoint of step {step} failed on the coordinator: "
                                     f"{outcome}")


class BackgroundWriter:
    """At most one save in flight, written by one background thread kept for the job.

    The thread is started once: starting a thread per save costs the loop a fraction of
    a millisecond each time, on a path whose whole budget is a memory copy.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], int] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_step: int | None = None
        self.last_seconds: float | None = None
        """How long the last background write (and commit, on rank 0) took."""

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def submit(self, fn: Callable[[], None], step: int) -> None:
        self.wait()
        self._error = None
        self.last_step = step
        self._idle.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fi-dist-save", daemon=True)
            self._thread.start()
        self._jobs.put((fn, step))

    def close(self) -> None:
        """Let the thread end once the job in flight (if any) is done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, step = job
            t0 = time.perf_counter()
            try:
                fn()
            except BaseException as exc:
                self._error = exc
                log.error("background checkpoint of step %d failed: %s", step, exc)
            self.last_seconds = time.perf_counter() - t0
            self._idle.set()

    def wait(self) -> None:
        """Wait for the save in flight; re-raise its error."""
        self._idle.wait()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
