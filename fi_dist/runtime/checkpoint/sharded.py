"""Sharded state (FSDP1, FSDP2 / DTensor) through torch.distributed.checkpoint (DCP).

DCP plans and reshards; fi-dist adds what the commit protocol needs: every rank writes
its shards with ``threads`` writer threads and checksums them *as they are written*
(DCP's file system object is wrapped, so each stream it opens hashes its bytes), then
lists them in its part of the manifest. Where a DCP version has no file system object
to wrap, each rank reads its own fresh files back from the page cache instead.

On load every rank verifies a share of the shard files (its own ``__<rank>_*`` files;
rank 0 also ``.metadata``), which also brings them into the page cache for DCP's reads.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

from fi_dist.runtime.checkpoint import layout
from fi_dist.runtime.checkpoint.hashing import XXH3_128, HashingReader, HashingWriter
from fi_dist.runtime.checkpoint.progress import Meter
from fi_dist.runtime.checkpoint.state import TrainState
from fi_dist.runtime.checkpoint.storage import Storage

log = logging.getLogger("fi_dist.checkpoint")

DIRNAME = "dcp"
_OWNER = re.compile(r"^__(\d+)_")


def _state(state: TrainState) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: PLC0415

    optims = [state.optimizer] if state.optimizer is not None else []
    msd, osd = get_state_dict(state.model, optims)
    return {"model": msd, "optim": osd} if optims else {"model": msd}


class HashingFileSystem:
    """Wraps a DCP file system object: every stream opened for writing hashes its bytes.

    Renames carry the checksum along (DCP writes ``.metadata.tmp``, then renames it).
    """

    def __init__(self, inner: Any, algo: str = XXH3_128) -> None:
        self._inner = inner
        self._algo = algo
        self._lock = threading.Lock()
        self.entries: dict[str, layout.FileEntry] = {}
        """Base name -> entry of every file written through this object."""

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")  # absent while copy/pickle rebuilds the object
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @contextlib.contextmanager
    def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
        with self._inner.create_stream(path, mode) as raw:
            if "w" not in mode:
                yield raw
                return
            w = HashingWriter(raw, self._algo)
            try:
                yield w
            finally:
                w.close()
            with self._lock:
                self.entries[_base(path)] = layout.FileEntry(w.size, w.hexdigest, self._algo)

    def rename(self, path: Any, new_path: Any) -> None:
        self._inner.rename(path, new_path)
        with self._lock:
            entry = self.entries.pop(_base(path), None)
            if entry is not None:
                self.entries[_base(new_path)] = entry


def _base(path: Any) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def writer_rank(name: str) -> int:
    """The rank that wrote shard file ``name`` (``__<rank>_<n>.distcp``; others: rank 0)."""
    m = _OWNER.match(_base(name))
    return int(m.group(1)) if m else 0


def save(storage: Storage, state: TrainState, rank: int, workdir: str, prefix: str,
         threads: int) -> dict[str, layout.FileEntry]:
    """DCP save of the sharded state (collective, synchronous).

    Returns:
        The manifest entries (relative to the checkpoint directory) of the files this
        rank wrote.
    """
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415

    target = f"{workdir}/{prefix}{DIRNAME}"
    if storage.local:
        writer = dcp.FileSystemWriter(target, thread_count=threads)
    else:
        writer = dcp.FsspecWriter(f"{storage.protocol}://{target}", thread_count=threads)
    hashing_fs = None
    if hasattr(writer, "fs"):
        hashing_fs = HashingFileSystem(writer.fs)
        writer.fs = hashing_fs
    dcp.save(_state(state), storage_writer=writer)
    if hashing_fs is not None and hashing_fs.entries:
        entries = hashing_fs.entries
    else:
        entries = _hash_back(storage, target, rank)
    return {f"{prefix}{DIRNAME}/{name}": e for name, e in entries.items()}


def _hash_back(storage: Storage, target: str, rank: int) -> dict[str, layout.FileEntry]:
    log.debug("rank %d: DCP writer has no file system object to wrap; hashing its files back",
              rank)
    mine = [n for n in storage.listdir(target) if writer_rank(n) == rank]
    out = {}
    for name in mine:
        size, digest = verify_file(storage, f"{target}/{name}", None)
        out[name] = layout.FileEntry(size, digest)
    return out


def verify_file(storage: Storage, path: str, entry: layout.FileEntry | None,
                meter: Meter | None = None) -> tuple[int, str]:
    """Read ``path`` through a reused buffer, hashing; check it against ``entry`` if given.

    Raises:
        CheckpointCorruptError: naming ``path``: missing, or size / checksum differ.
    """
    algo = entry.algo if entry is not None else XXH3_128
    try:
        with storage.open_read(path) as f:
            r = HashingReader(f, algo, meter.add if meter else None)
            try:
                r.drain()
            finally:
                digest = r.hexdigest()
    except FileNotFoundError:
        raise layout.CheckpointCorruptError(f"{path}: missing") from None
    if entry is not None:
        layout.check(entry, r.size, digest, path)
    return r.size, digest


def load(storage: Storage, state: TrainState, path: str) -> None:
    """DCP load into the live model and optimizer (collective)."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict import set_state_dict  # noqa: PLC0415

    sd = _state(state)
    if storage.local:
        reader = dcp.FileSystemReader(path)
    else:
        reader = dcp.FsspecReader(f"{storage.protocol}://{path}")
    dcp.load(sd, storage_reader=reader)
    optims = [state.optimizer] if state.optimizer is not None else []
    set_state_dict(state.model, optims, model_state_dict=sd["model"],
                   optim_state_dict=sd.get("optim", {}))
