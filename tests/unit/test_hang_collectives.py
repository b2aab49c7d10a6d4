"""The collective ledger around torch.distributed, on a one-rank gloo group in this process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from fi_dist.hang import ledger as L
from fi_dist.runtime.hang import collectives


@pytest.fixture
def group(tmp_path: Path) -> Iterator[L.Ledger]:
    led = L.Ledger(tmp_path / "0.ledger", 0, 0, 0, 1, threading.main_thread().ident or 0)
    originals = (dist.all_reduce, dist.init_process_group, torch._C._distributed_c10d.Work.wait)
    collectives.install(led)
    try:
        store = dist.HashStore()
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        yield led
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        collectives.uninstall()
    assert (dist.all_reduce, dist.init_process_group,
            torch._C._distributed_c10d.Work.wait) == originals


def default_slot(led: L.Ledger) -> L.SlotSnapshot:
    snap = L.read_ledger(led.path)
    assert snap is not None
    return next(s for s in snap.slots if s.group == "default" and s.kind == "python")


def test_collectives_are_counted_with_their_call_site(group: L.Ledger) -> None:
    assert L.read_ledger(group.path).inits == 1  # init_process_group is progress
    x = torch.ones(4)
    dist.all_reduce(x)  # CALL-SITE
    line = test_collectives_are_counted_with_their_call_site.__code__.co_firstlineno + 3
    s = default_slot(group)
    assert (s.issued, s.completed, s.op, s.line, s.func) == (1, 1, "all_reduce", line,
                                                          "test_collectives_are_counted_with_their_call_site")
    assert s.file == __file__ and not s.in_flight
    objs: list[object] = [None]
    dist.all_gather_object(objs, {"a": 1})  # nested all_gather calls count once
    dist.barrier()
    s = default_slot(group)
    assert (s.issued, s.completed, s.op) == (3, 3, "barrier")


def test_an_async_collective_completes_at_wait(group: L.Ledger) -> None:
    work = dist.all_reduce(torch.ones(2), async_op=True)
    s = default_slot(group)
    assert s.issued == 1 and s.op == "all_reduce"
    work.wait()
    assert default_slot(group).completed == 1


def test_a_collective_that_raises_is_recorded(group: L.Ledger) -> None:
    with pytest.raises(Exception, match="."):
        dist.broadcast(torch.ones(2), src=5)  # no rank 5 in a one-rank group
    s = default_slot(group)
    assert s.failed and s.in_flight and s.op == "broadcast" and s.error
