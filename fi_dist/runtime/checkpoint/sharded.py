"""Sharded state (FSDP1, FSDP2 / DTensor) through torch.distributed.checkpoint (DCP).

DCP plans and reshards; the bytes go through fi-dist's own storage layer
(:mod:`~fi_dist.runtime.checkpoint.dcp_storage`): every rank writes its pieces into
``dcp/__<rank>_<n>.distcp`` on ``threads`` threads, checksummed as they are written,
and lists its files in its part of the manifest.

On load every rank reads and verifies ``.metadata``, plans with DCP's load planner
and streams its own files (``__<rank>_*``) into the live shards, verifying them as they
are read; then the ranks agree, and only then is the state handed to the model and
optimizer (a damaged file on any rank fails the load on every rank alike).
Format-1 checkpoints (DCP's own file format): each rank verifies its share of the files
before the ranks agree, and DCP's own reader loads them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from fi_dist.runtime.checkpoint import layout
from fi_dist.runtime.checkpoint.hashing import XXH3_128, HashingReader
from fi_dist.runtime.checkpoint.progress import Meter
from fi_dist.runtime.checkpoint.state import TrainState
from fi_dist.runtime.checkpoint.storage import Storage

DIRNAME = "dcp"
_OWNER = re.compile(r"^__(\d+)_")


def _state(state: TrainState) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    optims = [state.optimizer] if state.optimizer is not None else []
    msd, osd = get_state_dict(state.model, optims)
    return {"model": msd, "optim": osd} if optims else {"model": msd}


def _base(path: Any) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def writer_rank(name: str) -> int:
    """The rank that wrote shard file ``name`` (``__<rank>_<n>.distcp``; others: rank 0)."""
    m = _OWNER.match(_base(name))
    return int(m.group(1)) if m else 0


def own_files(manifest: layout.Manifest, prefix: str, world: tuple[int, int]) -> list[str]:
    """The manifest names of the shard files that rank ``world[0]`` of ``world[1]`` reads.

    Each file is streamed and verified by one rank (its writer's rank, modulo the world
    size, so a smaller job still reads every file); ``.metadata`` is every rank's.
    """
    rank, world_size = world
    lead = f"{prefix}{DIRNAME}/"
    return [n for n in manifest.files if n.startswith(lead) and n != f"{lead}.metadata"
            and writer_rank(n) % world_size == rank]


def save(storage: Storage, state: TrainState, workdir: str, prefix: str,
         threads: int) -> dict[str, layout.FileEntry]:
    """DCP save of the sharded state (collective, synchronous).

    Returns:
        The manifest entries (relative to the checkpoint directory) of the files this
        rank wrote.
    """
    import torch.distributed.checkpoint as dcp

    from fi_dist.runtime.checkpoint.dcp_storage import ShardWriter

    writer = ShardWriter(storage, f"{workdir}/{prefix}{DIRNAME}", threads)
    dcp.save(_state(state), storage_writer=writer)
    return {f"{prefix}{DIRNAME}/{name}": e for name, e in writer.entries.items()}


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


def read_image(storage: Storage, path: str, entry: layout.FileEntry,
               on_bytes: Callable[[int], None] | None = None) -> torch.Tensor:
    """The whole file at ``path`` as a uint8 tensor, read with large reads and verified.

    Raises:
        CheckpointCorruptError: naming ``path``: missing, or size / checksum differ.
    """
    image = torch.empty(entry.size, dtype=torch.uint8)
    try:
        with storage.open_read(path) as f:
            r = HashingReader(f, entry.algo, on_bytes)
            try:
                r.readinto(image.numpy())
                eof = r.at_eof()
            finally:
                digest = r.hexdigest()
    except FileNotFoundError:
        raise layout.CheckpointCorruptError(f"{path}: missing") from None
    layout.check(entry, r.size if eof else r.size + 1, digest, path)
    return image


def stream(storage: Storage, state: TrainState, path: str, manifest: layout.Manifest,
           prefix: str, world: tuple[int, int], metadata: bytes,
           meter: Meter | None = None) -> dict[str, Any]:
    """Read this rank's pieces of a format-2 sharded checkpoint into the live state.

    No collective: DCP's default load planner needs no global coordination ("the
    default load behavior involved no global coordination"), so each rank plans alone
    and streams at once, instead of spending three object collectives and a barrier
    (``dcp.load``) on a plan that never changes. The plan is worked out key by key
    beside the stream (:class:`~fi_dist.runtime.checkpoint.dcp_plan.PlanAhead`), so the
    first read does not wait for the whole of it. The caller agrees with the other
    ranks afterwards, and calls :func:`finish` only when every rank succeeded.

    Args:
        path: the checkpoint's ``dcp`` directory.
        manifest: the checkpoint's manifest (entries to verify what is read).
        prefix: the files' prefix in the manifest.
        world: (this rank, world size): which files this rank streams and verifies.
        metadata: the ``.metadata`` bytes, read and verified already.

    Returns:
        The state dict the pieces were read into, for :func:`finish`.

    Raises:
        CheckpointCorruptError: naming why (a damaged file, or a checkpoint that does
            not fit the model); the live state may then be partly overwritten.
    """
    from fi_dist.runtime.checkpoint.dcp_storage import ShardReader

    lead = f"{prefix}{DIRNAME}/"
    entries = {n[len(lead):]: e for n, e in manifest.files.items() if n.startswith(lead)}
    mine = {n[len(lead):] for n in own_files(manifest, prefix, world)}
    reader = ShardReader(storage, path, entries, mine, metadata, meter.add if meter else None)
    try:
        sd = _state(state)
        reader.load(sd, world[0] == 0)
    except layout.CheckpointError:
        raise
    # Whatever DCP raises (a key the checkpoint lacks, a shape that differs): the ranks
    # must still reach their agreement, and the previous checkpoint may well fit.
    except Exception as exc:
        raise layout.CheckpointCorruptError(f"{path}: {exc}") from None
    return sd


def finish(state: TrainState, sd: dict[str, Any]) -> None:
    """Hand the state dict read by :func:`stream` to the model and optimizer."""
    from torch.distributed.checkpoint.state_dict import set_state_dict

    optims = [state.optimizer] if state.optimizer is not None else []
    set_state_dict(state.model, optims, model_state_dict=sd["model"],
                   optim_state_dict=sd.get("optim", {}))


def load_format1(storage: Storage, state: TrainState, path: str) -> None:
    """DCP's own collective load with its own reader (fi-dist's format-1 checkpoints).

    Raises:
        CheckpointCorruptError: on every rank alike (DCP gathers every rank's failure).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    sd = _state(state)
    reader: Any = (dcp.FileSystemReader(path) if storage.local
                   else dcp.FsspecReader(f"{storage.protocol}://{path}"))  # type: ignore[attr-defined]
    try:
        dcp.load(sd, storage_reader=reader)
    except CheckpointException as exc:
        why = "; ".join(dict.fromkeys(str(f[0]) if isinstance(f, tuple) else str(f)
                                      for f in exc.failures.values()))
        raise layout.CheckpointCorruptError(why) from None
    finish(state, sd)
