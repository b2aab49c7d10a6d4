"""Idle-worker culling: GPU/CPU utilisation + debugger activity + step heartbeat.

One :class:`IdleWatcher` per node, the same everywhere ranks run: started by the node
agent when the job's contract carries idle settings (:func:`start_for`), by the Flyte
decorator in a task's pod (:mod:`fi_dist.runtime.idle.task`), and as a process of its
own per Ray node (``python -m fi_dist.runtime.idle``, :mod:`.__main__`). See docs/idle.md.
"""

from __future__ import annotations

from collections.abc import Callable

from fi_dist.contract import JobContract
from fi_dist.rundir import RunDir
from fi_dist.runtime.idle.config import IDLE_EXIT_CODE
from fi_dist.runtime.idle.notify import notifiers_from_spec
from fi_dist.runtime.idle.sampler import make_sampler
from fi_dist.runtime.idle.watcher import IdleWatcher

__all__ = ["IDLE_EXIT_CODE", "IdleWatcher", "start_for"]


def start_for(job: JobContract, run_dir: RunDir | None, node: int,
              after_end: Callable[[], None] | None = None) -> IdleWatcher | None:
    """Start node ``node``'s culler if the job asks for one; None otherwise."""
    if job.idle is None or run_dir is None:
        return None
    watcher = IdleWatcher(job.idle, run_dir, node, make_sampler(job.idle.sampler),
                          notifiers_from_spec(job.idle), grace=job.grace_period,
                          after_end=after_end)
    watcher.start()
    return watcher
