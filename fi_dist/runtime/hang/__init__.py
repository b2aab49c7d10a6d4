"""The hang doctor's rank side, set up by ``rank_main`` before the script runs.

* the collective ledger (:mod:`~fi_dist.runtime.hang.collectives`): torch.distributed's
  collectives counted per process group, with op and call site, in a memory-mapped file;
* the stack dumper (:mod:`~fi_dist.runtime.hang.dumper`): a thread that answers
  ``fi-dist stacks`` with every thread's stack, and faulthandler as its fallback;
* torch's Flight Recorder on (``TORCH_FR_BUFFER_SIZE``, unless the job sets it), so
  NCCL's (and, on torch >= 2.8, gloo's) collectives issued from C++ are recorded too.

Off with ``hang_doctor: false`` (``FI_DIST_HANG_DOCTOR=0``). A failure to set any of it
up is logged and the job runs on without it. See docs/hangs.md.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from fi_dist import env_vars as ev
from fi_dist.contract import JobContract
from fi_dist.hang.ledger import Ledger, ensure_hang_dir, hang_dir, ledger_path
from fi_dist.runtime.environment import RankEnvironment
from fi_dist.runtime.hang.dumper import StackDumper

log = logging.getLogger("fi_dist.hang")

FLIGHT_RECORDER_ENTRIES = 2000
"""Flight Recorder entries per process (torch's ring buffer) when the job sets none."""


@dataclass
class HangDoctor:
    """What :func:`setup` installed in this rank."""

    ledger: Ledger
    dumper: StackDumper

    def ended(self, exitcode: int, failed: bool) -> None:
        """The script ended: readers see the rank's outcome in its ledger."""
        self.dumper.close_flight_recorder()
        self.ledger.ended(exitcode, failed)


def _recorder_variable() -> str:
    """torch >= 2.7 reads TORCH_FR_BUFFER_SIZE (and warns about the older NCCL name)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major, minor = (int(p) for p in version("torch").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return ev.TORCH_FR_BUFFER_SIZE
    return ev.TORCH_FR_BUFFER_SIZE if (major, minor) >= (2, 7) else ev.TORCH_NCCL_TRACE_BUFFER_SIZE


def setup(env: RankEnvironment, job: JobContract) -> HangDoctor | None:
    """Install the ledger, the dumper and the Flight Recorder; None when off or impossible."""
    if not job.hang_doctor:
        return None
    try:
        directory = ensure_hang_dir(hang_dir(job.run_dir, job.run_id))
        ledger = Ledger(ledger_path(directory, env.rank), env.rank, env.node_rank,
                        env.local_rank, env.world_size, threading.main_thread().ident or 0)
    except OSError as exc:
        log.warning("fi-dist: rank %d: no hang doctor (%s)", env.rank, exc)
        return None
    # Before the first process group exists: torch reads it when it creates one.
    if ev.TORCH_FR_BUFFER_SIZE not in os.environ and ev.TORCH_NCCL_TRACE_BUFFER_SIZE not in os.environ:
        os.environ[_recorder_variable()] = str(FLIGHT_RECORDER_ENTRIES)
    # The signal mask first: threads started later (torch's among them) inherit it.
    dumper = StackDumper(directory, env.rank, ledger)
    dumper.install()
    from fi_dist.runtime.hang import collectives

    collectives.install(ledger)
    return HangDoctor(ledger, dumper)
