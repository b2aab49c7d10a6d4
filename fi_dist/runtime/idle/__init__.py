"""Idle-worker culling: GPU/CPU utilisation + debugger activity + step heartbeat.

One :class:`IdleWatcher` per node, started by the node agent when the job's contract
carries idle settings (:func:`start_for`). See docs/idle.md.
"""

from __future__ import annotations

from fi_dist.contract import JobContract
from fi_dist.rundir import RunDir
from fi_dist.runtime.idle.config import IDLE_EXIT_CODE
from fi_dist.runtime.idle.notify import notifiers_from_spec
from fi_dist.runtime.idle.sampler import make_sampler
from fi_dist.runtime.idle.watcher import IdleWatcher

__all__ = ["IDLE_EXIT_CODE", "IdleWatcher", "start_for"]


def start_for(job: JobContract, run_dir: RunDir | None, node: int) -> IdleWatcher | None:
    """Start node ``node``'s culler if the job asks for one; None otherwise."""
    if job.idle is None or run_dir is None:
        return None
    watcher = IdleWatcher(job.idle, run_dir, node, make_sampler(job.idle.sampler),
                          notifiers_from_spec(job.idle), grace=job.grace_period)
    watcher.start()
    return watcher
