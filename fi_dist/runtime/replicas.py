"""``fi_dist.check_replicas(model)``: do every rank's replicas of the model still agree?

Each rank hashes each parameter (and buffer) it holds (XXH3-64 of the tensor's bytes),
the ranks all-gather the hashes (one small int64 tensor per rank) and every rank gets
the same answer: the first parameter whose hashes differ, which ranks agree with rank
0 and which do not, and for that first parameter the max absolute difference to rank
0's values (one more all-gather, of that parameter only). For replicated models (DDP,
a model each rank builds alike); sharded parameters (FSDP, DTensor shards) differ by
design. A collective: every rank of the group must call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fi_dist.hang.stacks import ranks_word


@dataclass
class Divergence:
    """One parameter whose replicas differ."""

    name: str
    groups: list[list[int]]
    """Ranks with equal bytes, the group holding rank 0 first."""
    max_abs_diff: float | None = None
    """Largest |value - rank 0's value| over the ranks that differ (first divergence only)."""

    @property
    def differing(self) -> list[int]:
        return sorted(r for g in self.groups[1:] for r in g)


@dataclass
class ReplicaCheck:
    """The outcome, the same on every rank."""

    parameters: int
    divergences: list[Divergence] = field(default_factory=list)
    structure: str = ""
    """Set when the ranks do not even hold the same parameter names and shapes."""

    @property
    def ok(self) -> bool:
        return not self.divergences and not self.structure

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.structure:
            return f"replicas differ in structure: {self.structure}"
        if not self.divergences:
            return f"all {self.parameters} parameters and buffers agree on every rank"
        first = self.divergences[0]
        others = [r for r in first.groups[0] if r != min(first.groups[0])]
        notes = [f"{ranks_word(others)} {'agrees' if len(others) == 1 else 'agree'}"] if others \
            else []
        if first.max_abs_diff is not None:
            notes.append(f"max abs diff {first.max_abs_diff:.6g}")
        differing = first.differing
        return (f"parameter {first.name!r} diverged: {ranks_word(differing)} "
                f"{'differs' if len(differing) == 1 else 'differ'} from rank "
                f"{min(first.groups[0])}" + (f" ({'; '.join(notes)})" if notes else "")
                + f"; {len(self.divergences)} of {self.parameters} parameters and buffers differ")


class ReplicasDiverged(RuntimeError):
    """Raised by :func:`check_replicas` with ``raise_on_mismatch=True``."""

    def __init__(self, check: ReplicaCheck) -> None:
        super().__init__(str(check))
        self.check = check


def _hash(t: Any) -> int:
    import torch
    import xxhash

    data = t.detach().to("cpu").contiguous().reshape(-1)
    raw = data.view(torch.uint8).numpy() if data.numel() else b""
    value = xxhash.xxh3_64_intdigest(raw)
    return value - (1 << 64) if value >= 1 << 63 else value  # as a signed int64


def check_replicas(model: Any, group: Any = None, buffers: bool = True,
                   raise_on_mismatch: bool = False) -> ReplicaCheck:
    """Compare every rank's parameters (and buffers) of ``model``.

    Args:
        model: an ``nn.Module`` (a DDP wrapper too).
        group: the process group to compare over (default: the whole job).
        buffers: compare buffers too (batch-norm statistics diverge legitimately when
            ranks see different data without SyncBatchNorm).
        raise_on_mismatch: raise :class:`ReplicasDiverged` instead of returning.

    Returns:
        The same :class:`ReplicaCheck` on every rank.
    """
    import torch
    import torch.distributed as dist

    named = list(model.named_parameters())
    if buffers:
        named += list(model.named_buffers())
    world = dist.get_world_size(group)
    device = torch.device("cpu")
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    shape_key = _hash(torch.tensor(list(map(ord, repr([(n, tuple(t.shape), str(t.dtype))
                                                           for n, t in named]))),
                                   dtype=torch.int32))
    mine = torch.tensor([shape_key, *(_hash(t) for _, t in named)], dtype=torch.int64,
                        device=device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(named)], dtype=torch.int64, device=device),
                    group=group)
    if len({int(s.item()) for s in sizes}) > 1:
        check = ReplicaCheck(len(named), structure="parameter counts per rank: "
                             + ", ".join(str(int(s.item())) for s in sizes))
        return _done(check, raise_on_mismatch)
    everyone = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(everyone, mine, group=group)
    table = torch.stack(everyone).cpu()  # ranks x (1 + parameters)
    ranks = [dist.get_global_rank(group, i) if group is not None else i for i in range(world)]
    if len(set(table[:, 0].tolist())) > 1:
        return _done(ReplicaCheck(len(named), structure="parameter names, shapes or dtypes "
                                  "differ between ranks"), raise_on_mismatch)
    check = ReplicaCheck(len(named))
    for i, (name, _) in enumerate(named, start=1):
        column = table[:, i].tolist()
        if len(set(column)) == 1:
            continue
        groups: dict[int, list[int]] = {}
        for r, h in zip(ranks, column, strict=True):
            groups.setdefault(h, []).append(r)
        ordered = sorted(groups.values(), key=lambda g: (0 not in g and ranks[0] not in g, g))
        check.divergences.append(Divergence(name, ordered))
    if check.divergences:  # every rank knows: the same extra collective everywhere
        first = check.divergences[0]
        tensor = dict(named)[first.name].detach().to(device).contiguous()
        values = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(values, tensor, group=group)
        base = values[0].to(torch.float64)
        first.max_abs_diff = max(float((v.to(torch.float64) - base).abs().max().item())
                                 if v.numel() else 0.0 for v in values[1:]) if world > 1 else 0.0
    return _done(check, raise_on_mismatch)


def _done(check: ReplicaCheck, raise_on_mismatch: bool) -> ReplicaCheck:
    if raise_on_mismatch and not check.ok:
        raise ReplicasDiverged(check)
    return check
