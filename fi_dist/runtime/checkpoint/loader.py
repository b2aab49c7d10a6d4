"""Resume: find the newest checkpoint EVERY rank can load, verify it, apply it.

Each candidate (newest first) is read and checked against its manifest on every
rank, then one all_reduce(MIN) decides: all ranks apply the same checkpoint, or all
move on to the previous one. Sharded state goes through torch.distributed.checkpoint.
"""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING, Any

import torch

from fi_dist.runtime.checkpoint import layout
from fi_dist.runtime.checkpoint.state import load_into, set_rng_state, unwrap

if TYPE_CHECKING:
    from fi_dist.runtime.checkpoint.manager import Checkpointer

log = logging.getLogger("fi_dist.checkpoint")


def portable_rng(state: dict[str, Any]) -> dict[str, Any]:
    """RNG state in types ``torch.load(weights_only=True)`` accepts (numpy -> tensor)."""
    out = dict(state)
    if "numpy" in out:
        kind, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached)
    return out


def native_rng(state: dict[str, Any]) -> dict[str, Any]:
    out = dict(state)
    if "numpy" in out:
        kind, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (kind, keys.numpy(), pos, has_gauss, cached)
    return out


def _read(ck: Checkpointer, cand: layout.Candidate, name: str) -> Any:
    path = f"{cand.path}/{name}"
    try:
        data = ck.storage.read_bytes(path)
    except FileNotFoundError:
        raise layout.CheckpointCorruptError(f"{path}: missing") from None
    layout.verify(cand.manifest.files.get(name), data, path)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _prefix(cand: layout.Candidate) -> str:
    # On object stores the files live under "<nonce>/" inside the step directory.
    return str(cand.manifest.meta.get("prefix", ""))


def _load_candidate(ck: Checkpointer, cand: layout.Candidate) -> dict[str, Any]:
    """Read and verify everything this rank needs from ``cand`` (nothing applied yet)."""
    m, pre = cand.manifest, _prefix(cand)
    loaded: dict[str, Any] = {}
    if m.mode == "replicated":
        if ck.sharded:
            raise layout.CheckpointError(f"{cand.path} holds replicated state; the model is sharded")
        loaded["model"] = _read(ck, cand, f"{pre}model.pt")
        if ck.optimizer is not None and f"{pre}optimizer.pt" in m.files:
            loaded["optimizer"] = _read(ck, cand, f"{pre}optimizer.pt")
    elif ck.rank == 0:
        # DCP reads the shards itself; verify them once, on the coordinator.
        for name in m.files:
            if name.startswith(f"{pre}dcp/"):
                _read_raw_verified(ck, cand, name)
    if ck.scheduler is not None and f"{pre}scheduler.pt" in m.files:
        loaded["scheduler"] = _read(ck, cand, f"{pre}scheduler.pt")
    rank_file = f"{pre}rank-{ck.rank:05d}.pt"
    if m.world_size == ck.world_size:
        loaded["rank"] = _read(ck, cand, rank_file)
    else:
        log.warning("rank %d: %s was saved by %d ranks, this job has %d: model and optimizer "
                    "are restored, per-rank RNG and data position are not", ck.rank, cand.path,
                    m.world_size, ck.world_size)
    return loaded


def _read_raw_verified(ck: Checkpointer, cand: layout.Candidate, name: str) -> None:
    path = f"{cand.path}/{name}"
    layout.verify(cand.manifest.files.get(name), ck.storage.read_bytes(path), path)


def _apply(ck: Checkpointer, cand: layout.Candidate, loaded: dict[str, Any]) -> None:
    if cand.manifest.mode == "sharded":
        load_sharded(ck, f"{cand.path}/{_prefix(cand)}dcp")
    else:
        unwrap(ck.model).load_state_dict(loaded["model"])
        if "optimizer" in loaded:
            ck.optimizer.load_state_dict(loaded["optimizer"])
    if "scheduler" in loaded:
        load_into(ck.scheduler, loaded["scheduler"])
    rank_state = loaded.get("rank")
    if rank_state is not None:
        set_rng_state(native_rng(rank_state["rng"]))
        if ck.data_state is not None and "data" in rank_state:
            load_into(ck.data_state, rank_state["data"])


def _all_ok(ck: Checkpointer, ok: bool) -> bool:
    from fi_dist.runtime.checkpoint.manager import _dist  # noqa: PLC0415

    dist = _dist()
    if dist is None:
        return ok
    t = torch.tensor([1 if ok else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=ck.group)
    return bool(t.item())


def resume(ck: Checkpointer) -> int:
    """Apply the newest checkpoint all ranks can load; the step to start from (0: none).

    Raises:
        CheckpointCorruptError: checkpoints exist but none of them loads on every rank.
    """
    from fi_dist.runtime.checkpoint.manager import _dist  # noqa: PLC0415

    dist = _dist()
    box: list[Any] = [None]
    if ck.rank == 0:
        complete, rejected = layout.scan(ck.storage)
        for path, why in rejected:
            log.warning("ignoring incomplete checkpoint %s: %s", path, why)
        # No save of this job can be in flight before resume: leftovers are garbage.
        for path in layout.garbage(ck.storage):
            ck.storage.rm(path)
        box = [complete]
    if dist is not None:
        dist.broadcast_object_list(box, src=0, group=ck.group)
    candidates: list[layout.Candidate] = box[0]
    errors: list[str] = []
    for cand in candidates:
        error = ""
        try:
            loaded = _load_candidate(ck, cand)
        except (layout.CheckpointError, OSError, RuntimeError) as exc:
            error, loaded = f"rank {ck.rank}: {exc}", {}
        if _all_ok(ck, not error):
            _apply(ck, cand, loaded)
            if ck.rank == 0:
                log.warning("resumed from %s (step %d)", cand.path, cand.step)
                print(f"fi-dist: resumed from checkpoint step {cand.step}", flush=True)
            return cand.step
        gathered = [error]
        if dist is not None:
            gathered = [None] * ck.world_size  # type: ignore[list-item]
            dist.all_gather_object(gathered, error, group=ck.group)
        bad = "; ".join(e for e in gathered if e)
        errors.append(bad)
        if ck.rank == 0:
            log.error("checkpoint %s is corrupt, falling back to the previous one: %s",
                      cand.path, bad)
            print(f"fi-dist: checkpoint step {cand.step} rejected: {bad}", flush=True)
    if candidates:
        raise layout.CheckpointCorruptError("no loadable checkpoint: " + " | ".join(errors))
    return 0


# --- sharded state (FSDP / DTensor) through torch.distributed.checkpoint ----------------
def _dcp_state(ck: Checkpointer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict  # noqa: PLC0415

    optims = [ck.optimizer] if ck.optimizer is not None else []
    msd, osd = get_state_dict(ck.model, optims)
    return {"model": msd, "optim": osd} if optims else {"model": msd}


def save_sharded(ck: Checkpointer, workdir: str, prefix: str) -> dict[str, layout.FileEntry]:
    """DCP save (collective, synchronous); on rank 0 the manifest entries of its files."""
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415

    target = f"{workdir}/{prefix}dcp"
    if ck.storage.local:
        writer = dcp.FileSystemWriter(target)
    else:
        writer = dcp.FsspecWriter(f"{ck.storage.protocol}://{target}")
    dcp.save(_dcp_state(ck), storage_writer=writer)
    entries: dict[str, layout.FileEntry] = {}
    if ck.rank == 0:
        for name in ck.storage.listdir(target):
            data = ck.storage.read_bytes(f"{target}/{name}")
            entries[f"{prefix}dcp/{name}"] = layout.FileEntry(len(data), layout.sha256(data))
    return entries


def load_sharded(ck: Checkpointer, path: str) -> None:
    import torch.distributed.checkpoint as dcp  # noqa: PLC0415
    from torch.distributed.checkpoint.state_dict import set_state_dict  # noqa: PLC0415

    state = _dcp_state(ck)
    if ck.storage.local:
        reader = dcp.FileSystemReader(path)
    else:
        reader = dcp.FsspecReader(f"{ck.storage.protocol}://{path}")
    dcp.load(state, storage_reader=reader)
    optims = [ck.optimizer] if ck.optimizer is not None else []
    set_state_dict(ck.model, optims, model_state_dict=state["model"],
                   optim_state_dict=state.get("optim", {}))
