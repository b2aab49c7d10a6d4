"""Idle-worker culling: GPU/CPU utilisation + debugger activity + step heartbeat.

One :class:`IdleWatcher` per node, started by the node agent when FI_DIST_IDLE_TIMEOUT
is set (:func:`start_from_env`). See docs/idle.md.
"""

from __future__ import annotations

import os

from fi_dist import env_vars as ev
from fi_dist.rundir import RunDir
from fi_dist.runtime.idle.config import IDLE_EXIT_CODE, idle_env, idle_spec_from_env
from fi_dist.runtime.idle.notify import notifiers_from_spec
from fi_dist.runtime.idle.sampler import make_sampler
from fi_dist.runtime.idle.watcher import IdleWatcher, read_node_idle

__all__ = ["IDLE_EXIT_CODE", "IdleWatcher", "idle_env", "idle_spec_from_env", "read_node_idle",
           "start_from_env"]


def start_from_env(run_dir: RunDir | None, node: int) -> IdleWatcher | None:
    """Start node ``node``'s culler if FI_DIST_IDLE_* asks for one; None otherwise."""
    spec = idle_spec_from_env()
    if spec is None or run_dir is None:
        return None
    grace = float(os.environ.get(ev.FI_DIST_GRACE_PERIOD) or 30.0)
    watcher = IdleWatcher(spec, run_dir, node, make_sampler(spec.sampler),
                          notifiers_from_spec(spec), grace=grace)
    watcher.start()
    return watcher
