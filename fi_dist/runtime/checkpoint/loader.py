"""Resume: find the newest checkpoint EVERY rank can load, verify it, apply it.

Each candidate (newest first) is read and checked against its manifest on every
rank, then one all_reduce(MIN) decides: all ranks apply the same checkpoint, or all
move on to the previous one. Files are read with large sequential reads straight into
fresh tensor memory (the model file and a rank's DCP shards: into the live tensors),
several files at once, checksummed while they are read; nothing is decoded, let alone
applied, before its checksum matched. A sharded checkpoint costs two collectives in all
(the candidate list, the agreement): DCP plans on each rank alone. Format-1 files
(``*.pt``, sha256) load through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from fi_dist.runtime.checkpoint import layout, sharded, tensorfile
from fi_dist.runtime.checkpoint.collective import Ranks
from fi_dist.runtime.checkpoint.hashing import HashingReader
from fi_dist.runtime.checkpoint.progress import Meter
from fi_dist.runtime.checkpoint.state import TrainState, load_into, native_rng, set_rng_state
from fi_dist.runtime.checkpoint.storage import Storage

log = logging.getLogger("fi_dist.checkpoint")

LEGACY_SUFFIX = ".pt"


def read_file(storage: Storage, path: str, entry: layout.FileEntry,
              meter: Meter | None = None, into: dict[str, torch.Tensor] | None = None) -> Any:
    """Read, verify and decode one checkpoint file (tensor file, or format-1 ``.pt``).

    ``into``: see :func:`tensorfile.read` (tensor files only).

    Raises:
        CheckpointCorruptError: naming ``path``: missing, torn, or not what the manifest says.
    """
    broken: Exception | None = None
    try:
        with storage.open_read(path) as f:
            r = HashingReader(f, entry.algo, meter.add if meter else None)
            try:
                if path.endswith(tensorfile.SUFFIX):
                    try:
                        tree, tensors = tensorfile.read(r, entry.size, into)
                    except (tensorfile.FormatError, EOFError) as exc:
                        # Most likely a damaged byte: read on, so the error can say so.
                        broken = exc
                        r.drain()
                else:
                    data = bytearray(entry.size)
                    r.readinto(data)
                eof = r.at_eof()
            finally:
                digest = r.hexdigest()
    except FileNotFoundError:
        raise layout.CheckpointCorruptError(f"{path}: missing") from None
    layout.check(entry, r.size if eof else r.size + 1, digest, path)
    if broken is not None:
        raise layout.CheckpointCorruptError(f"{path}: unreadable ({broken})")
    try:
        if path.endswith(tensorfile.SUFFIX):
            return tensorfile.decode(json.loads(tree), tensors)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (ValueError, tensorfile.FormatError) as exc:
        raise layout.CheckpointCorruptError(f"{path}: undecodable ({exc})") from None


def _find(m: layout.Manifest, prefix: str, stem: str) -> str | None:
    for suffix in (tensorfile.SUFFIX, LEGACY_SUFFIX):
        if f"{prefix}{stem}{suffix}" in m.files:
            return f"{prefix}{stem}{suffix}"
    return None


def _prefix(cand: layout.Candidate) -> str:
    # On object stores the files live under "<nonce>/" inside the step directory.
    return str(cand.manifest.meta.get("prefix", ""))


def _read_candidate(storage: Storage, state: TrainState, ranks: Ranks,
                    cand: layout.Candidate, threads: int) -> dict[str, Any]:
    """Read and verify everything this rank needs from ``cand`` (nothing applied yet)."""
    m, pre = cand.manifest, _prefix(cand)
    wanted: dict[str, str | None] = {}
    verify_only: list[str] = []
    if m.mode == "replicated":
        if state.sharded:
            raise layout.CheckpointError(f"{cand.path} holds replicated state; the model is sharded")
        wanted["model"] = _find(m, pre, "model")
        if wanted["model"] is None:
            raise layout.CheckpointCorruptError(f"{cand.path}: the manifest lists no model file")
        if state.optimizer is not None:
            wanted["optimizer"] = _find(m, pre, "optimizer")
    elif m.format >= 2:
        # .metadata first; the shards are streamed (and verified) below, after it.
        verify_only = [f"{pre}{sharded.DIRNAME}/.metadata"]
    else:
        # Format 1: each rank verifies its share of the shard files before the ranks agree.
        verify_only = [n for n in m.files if n.startswith(f"{pre}{sharded.DIRNAME}/")
                       and sharded.writer_rank(n) % ranks.world_size == ranks.rank]
    if state.scheduler is not None:
        wanted["scheduler"] = _find(m, pre, "scheduler")
    if m.world_size == ranks.world_size:
        wanted["rank"] = _find(m, pre, f"rank-{ranks.rank:05d}")
        if wanted["rank"] is None:
            raise layout.CheckpointCorruptError(
                f"{cand.path}: the manifest lists no file for rank {ranks.rank}")
    else:
        log.warning("rank %d: %s was saved by %d ranks, this job has %d: model and optimizer "
                    "are restored, per-rank RNG and data position are not", ranks.rank,
                    cand.path, m.world_size, ranks.world_size)
    names = {k: v for k, v in wanted.items() if v is not None}
    world = (ranks.rank, ranks.world_size)
    # (A rank of a grown job may stream no file of its own: it reads byte ranges.)
    dcp2 = m.mode == "sharded" and m.format >= 2
    streamed = sharded.own_files(m, pre, world) if dcp2 else []
    total = sum(m.files[n].size for n in [*names.values(), *verify_only, *streamed])
    meter = Meter("load", cand.step, total, ranks.rank)

    # The model file is read straight into the live parameters and buffers (CPU ones):
    # load_state_dict then copies nothing (a tensor copied onto itself is skipped). If
    # the candidate is rejected, the one used instead overwrites them all again.
    live = {k: v.detach() for k, v in state.module.state_dict(keep_vars=True).items()
            if isinstance(v, torch.Tensor)} if "model" in names else None

    def one(job: tuple[str, str]) -> tuple[str, Any]:
        key, name = job
        path = f"{cand.path}/{name}"
        if key == "model":
            return key, read_file(storage, path, m.files[name], meter, live)
        if key == "shard" and m.format >= 2:
            return name, sharded.read_image(storage, path, m.files[name], meter.add)
        if key == "shard":
            sharded.verify_file(storage, path, m.files[name], meter)
            return name, None
        return key, read_file(storage, path, m.files[name], meter)

    jobs = sorted([*names.items(), *(("shard", n) for n in verify_only)],
                  key=lambda j: m.files[j[1]].size, reverse=True)
    if dcp2:
        # The shards go straight into the live state on this thread while the small
        # files are read beside it; .metadata (what the plan needs) comes first.
        meta = verify_only[0]
        image = one(("shard", meta))[1]
        jobs = [j for j in jobs if j[1] != meta]
        with ThreadPoolExecutor(max(1, min(threads, len(jobs))),
                                thread_name_prefix="fi-dist-read") as pool:
            pending = pool.map(one, jobs)
            dcp_state = sharded.stream(storage, state, f"{cand.path}/{pre}{sharded.DIRNAME}",
                                       m, pre, world, image.numpy().tobytes(), meter)
            results = {**dict(pending), "dcp_state": dcp_state}
    elif threads > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(min(threads, len(jobs)), thread_name_prefix="fi-dist-read") as pool:
            results = dict(pool.map(one, jobs))
    else:
        results = dict(map(one, jobs))
    meter.finish()
    return {k: v for k, v in results.items() if k in wanted or k == "dcp_state"}


def _apply(storage: Storage, state: TrainState, cand: layout.Candidate,
           loaded: dict[str, Any]) -> None:
    if "dcp_state" in loaded:
        sharded.finish(state, loaded["dcp_state"])
    elif cand.manifest.mode == "sharded":  # format 1: DCP's own collective load
        sharded.load_format1(storage, state, f"{cand.path}/{_prefix(cand)}{sharded.DIRNAME}")
    else:
        state.module.load_state_dict(loaded["model"])
        if "optimizer" in loaded:
            state.optimizer.load_state_dict(loaded["optimizer"])
    if "scheduler" in loaded:
        load_into(state.scheduler, loaded["scheduler"])
    rank_state = loaded.get("rank")
    if rank_state is not None:
        set_rng_state(native_rng(rank_state["rng"]))
        if state.data_state is not None and "data" in rank_state:
            load_into(state.data_state, rank_state["data"])


def resume(storage: Storage, state: TrainState, ranks: Ranks, threads: int = 1) -> int:
    """Apply the newest checkpoint all ranks can load (collective).

    Args:
        storage: the checkpoint root.
        state: what to restore.
        ranks: this process's place in the job (and the group to agree over).
        threads: files read at once.

    Returns:
        The step to start from (0: there was no checkpoint).

    Raises:
        CheckpointCorruptError: checkpoints exist but none of them loads on every rank.
    """
    complete = None
    if ranks.rank == 0:
        complete, rejected = layout.scan(storage)
        for path, why in rejected:
            log.warning("ignoring incomplete checkpoint %s: %s", path, why)
        # No save of this job can be in flight before resume: leftovers are garbage.
        for path in layout.garbage(storage):
            storage.rm(path)
    candidates: list[layout.Candidate] = ranks.broadcast(complete)
    errors: list[str] = []
    for cand in candidates:
        error = ""
        try:
            loaded = _read_candidate(storage, state, ranks, cand, threads)
        except (layout.CheckpointError, OSError, RuntimeError) as exc:
            error, loaded = f"rank {ranks.rank}: {exc}", {}
        if ranks.all_true(not error):
            try:
                _apply(storage, state, cand, loaded)
            except layout.CheckpointCorruptError as exc:  # a shard stream, on every rank
                error = str(exc)  # alike: the ranks agreed on every rank's failure
            else:
                if ranks.rank == 0:
                    log.warning("resumed from %s (step %d)", cand.path, cand.step)
                    print(f"fi-dist: resumed from checkpoint step {cand.step}", flush=True)
                return cand.step
        bad = "; ".join(dict.fromkeys(e for e in ranks.gather(error) if e))
        errors.append(bad)
        if ranks.rank == 0:
            log.error("checkpoint %s cannot be loaded, falling back to the previous one: %s",
                      cand.path, bad)
            print(f"fi-dist: checkpoint step {cand.step} rejected: {bad}", flush=True)
    if candidates:
        raise layout.CheckpointCorruptError("no loadable checkpoint: " + " | ".join(errors))
    return 0
