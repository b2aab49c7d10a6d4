"""Keep a paused job alive: long process-group timeouts and a quiet NCCL watchdog.

A rank stopped in the debugger leaves its peers waiting inside a collective. Without
this the peers die after the process group's timeout (the script may ask for 10 s), the
NCCL watchdog aborts the communicator, or the heartbeat monitor kills the process. In
debug mode every ``init_process_group``/``new_group`` gets ``FI_DIST_DEBUG_PG_TIMEOUT``
(default 7 days; the same timeout bounds the TCPStore the group rendezvouses on),
whatever the script passed: the script's short timeout is meant for undebugged runs.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
from datetime import timedelta
from typing import Any

from fi_dist.contract import DEFAULT_PG_TIMEOUT

log = logging.getLogger("fi_dist.debug")

NCCL_ENV = {
    # The heartbeat monitor kills a process whose watchdog thread looks stuck.
    "TORCH_NCCL_ENABLE_MONITORING": "0",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": str(int(DEFAULT_PG_TIMEOUT)),
    # Dump-on-timeout spends the timeout again writing traces; not wanted while paused.
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "0",
}
"""NCCL watchdog settings for a job that may sit paused for hours."""


def _force_timeout(fn: Any, timeout: timedelta) -> Any:
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind_partial(*args, **kwargs)
        given = bound.arguments.get("timeout")
        bound.arguments["timeout"] = timeout
        if given is not None and given != bound.arguments["timeout"]:
            log.info("fi-dist debug: %s timeout %s raised to %s so paused ranks survive",
                     fn.__name__, given, bound.arguments["timeout"])
        return fn(*bound.args, **bound.kwargs)

    wrapper.__fi_dist_debug__ = True  # type: ignore[attr-defined]
    return wrapper


def apply(pg_timeout: float = DEFAULT_PG_TIMEOUT) -> None:
    """Set the NCCL env and wrap the process-group constructors (idempotent).

    Args:
        pg_timeout: seconds every process group (and its store) gets while debugging.
    """
    for key, value in NCCL_ENV.items():
        os.environ.setdefault(key, value)
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    for name in ("init_process_group", "new_group"):
        original = getattr(c10d, name)
        if getattr(original, "__fi_dist_debug__", False):
            continue
        patched = _force_timeout(original, timedelta(seconds=pg_timeout))
        setattr(c10d, name, patched)
        setattr(dist, name, patched)
