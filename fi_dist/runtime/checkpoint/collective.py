"""Who saves with whom: the process group the checkpointer talks over, and its few collectives.

All of them run on a gloo group (CPU tensors, usable from helper threads): the job's
default group when it is gloo, a dedicated gloo group otherwise (NCCL jobs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def process_group() -> Any:
    """``torch.distributed`` when a default process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job, as the checkpointer sees it."""

    rank: int = 0
    world_size: int = 1
    group: Any = None
    """The gloo group to use (None: the default group, or no distributed job at all)."""

    @classmethod
    def current(cls) -> Ranks:
        """From the initialised process group (collective when a gloo group must be made)."""
        dist = process_group()
        if dist is None:
            return cls()
        group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
        return cls(dist.get_rank(), dist.get_world_size(), group)

    def all_true(self, ok: bool) -> bool:
        """Collective: True only when ``ok`` on every rank."""
        dist = process_group()
        if dist is None:
            return ok
        t = torch.tensor([1 if ok else 0], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return bool(t.item())

    def broadcast(self, value: Any) -> Any:
        """Collective: rank 0's ``value`` on every rank."""
        dist = process_group()
        if dist is None:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Collective: every rank's ``value``, by rank."""
        dist = process_group()
        if dist is None:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value, group=self.group)
        return out
