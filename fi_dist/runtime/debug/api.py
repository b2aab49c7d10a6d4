"""``fi_dist.breakpoint()``: a rendezvous-aware breakpoint for every rank of the job.

* ``breakpoint()`` (call it on every rank): all ranks meet (a store counter, no
  timeout), then each stops in the debugger at the caller's line, so every rank shows
  the same program point. The hub does not pause a rank that is on its way there.
* ``breakpoint(rank=k)``: rank k stops; the others wait in a store poll with no timeout
  (however long, unlike ``torch.distributed.breakpoint``'s barrier). Only a *continue*
  of rank k (or the client leaving) releases them; stepping on rank k does not.

Outside a ``--debug`` job (no hub agent) or with no client attached it returns at once.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from types import FrameType
from typing import Any

from fi_dist.runtime import heartbeat
from fi_dist.runtime.debug import agent as agent_mod

log = logging.getLogger("fi_dist.debug")

_calls = itertools.count()
POLL = 0.05
"""Seconds between two store polls of a waiting rank."""


def _store() -> Any:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return None
    return dist.distributed_c10d._get_default_store()


def _stop_at(frame: FrameType) -> None:
    """Suspend this thread at ``frame``'s next line (what ``debugpy.breakpoint`` does)."""
    from debugpy.server import api

    agent_mod.ensure_tracing()
    api._settrace(suspend=True, trace_only_current_thread=True, patch_multiprocessing=False,
                  stop_at_frame=frame)


def _wait_key(store: Any, key: str) -> None:
    # store.wait() would time out after the store's timeout; polling check() never does.
    while not store.check([key]):
        time.sleep(POLL)


def breakpoint(rank: int | None = None) -> None:
    """Stop every rank at this line, or only ``rank`` while the others wait.

    Args:
        rank: the rank to stop; None stops all ranks at the same program point.
    Raises:
        ValueError: ``rank`` is outside the job.
    """
    frame = sys._getframe(1)
    rank_agent = agent_mod.current()
    if rank_agent is None:
        log.warning("fi_dist.breakpoint() ignored: the job does not run under `fi-dist run "
                    "--debug`")
        return
    import debugpy

    env = rank_agent.env
    if rank is not None and not 0 <= rank < env.world_size:
        raise ValueError(f"fi_dist.breakpoint(rank={rank}): rank must be in "
                         f"0..{env.world_size - 1}")
    n = next(_calls)
    store = _store()
    where = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    connected = debugpy.is_client_connected()
    if rank is None:
        rank_agent.send({"event": "hold"})
        if store is not None:
            store.add(f"fi_dist/bp/{n}/arrived", 1)
            while int(store.add(f"fi_dist/bp/{n}/arrived", 0)) < env.world_size:
                time.sleep(POLL)
        if connected:
            _stop_at(frame)  # the hub drops the hold when this rank reports stopped
        else:
            rank_agent.send({"event": "release"})
        return
    key = f"fi_dist/bp/{n}/release"
    if env.rank == rank:
        if store is not None and connected:
            rank_agent.on_resume(lambda: store.set(key, "1"))
            _stop_at(frame)
        elif store is not None:
            store.set(key, "1")
        return
    if store is None:
        return
    rank_agent.send({"event": "hold"})
    heartbeat.current().state(f"waiting for rank {rank} at fi_dist.breakpoint ({where})")
    try:
        _wait_key(store, key)
    finally:
        rank_agent.send({"event": "release"})
        heartbeat.current().state("running")
