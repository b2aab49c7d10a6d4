"""The Checkpointer: resume on start, save every N steps, save-and-exit on preemption.

::

    ckpt = Checkpointer(dir, model=ddp, optimizer=opt, scheduler=sched, every=100)
    for step in ckpt.steps(total):      # resumes from the latest complete checkpoint
        train_one_step(step)

Per step boundary the loop pays a heartbeat (a clock read), one tiny all_reduce (the
preemption agreement) and, every N steps, a host-memory copy of the state (async save).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import torch

from fi_dist.runtime import heartbeat
from fi_dist.runtime.checkpoint import layout, loader, sharded, tensorfile, writer
from fi_dist.runtime.checkpoint.collective import Ranks, process_group
from fi_dist.runtime.checkpoint.config import CheckpointConfig
from fi_dist.runtime.checkpoint.preemption import PreemptionMonitor, parse_signals
from fi_dist.runtime.checkpoint.staging import HostStaging
from fi_dist.runtime.checkpoint.state import TrainState, portable_rng, rng_state, state_of
from fi_dist.runtime.checkpoint.storage import Storage

log = logging.getLogger("fi_dist.checkpoint")


class Checkpointer:
    """Preemption-safe checkpoint-and-resume for one training loop (every rank makes one).

    Args:
        dir: local directory or fsspec URL (``s3://bucket/run``) shared by all ranks.
        model: the model (DDP-wrapped is fine; FSDP/DTensor models go through DCP).
        optimizer, scheduler: saved and restored with the model when given.
        data_state: an object with ``state_dict()/load_state_dict()`` for the data
            position (a sampler, a StatefulDataLoader), saved per rank.
        **options: :class:`CheckpointConfig` fields (every, keep_last, grace_period,
            signals, async_save, exit_code, commit_timeout, storage_options, io_threads).

    Must be created on the main thread after ``init_process_group`` (it is collective).
    """

    def __init__(self, dir: str, *, model: torch.nn.Module, optimizer: Any = None,
                 scheduler: Any = None, data_state: Any = None, **options: Any) -> None:
        self.cfg = CheckpointConfig(**options)
        self.storage = Storage(str(dir), self.cfg.storage_options)
        self.state = TrainState(model, optimizer, scheduler, data_state)
        self.sharded = self.state.sharded
        # Agreement and part exchange must not ride on NCCL (CPU tensors, side threads).
        self.ranks = Ranks.current()
        self.rank, self.world_size = self.ranks.rank, self.ranks.world_size
        dist = process_group()
        store = None
        if dist is not None:
            store = dist.PrefixStore("fi_dist/", dist.distributed_c10d._get_default_store())
        self.nonce: str = self.ranks.broadcast(uuid.uuid4().hex[:8])
        self.exchange = writer.PartExchange(store, self.cfg.commit_timeout)
        self.monitor = PreemptionMonitor(parse_signals(self.cfg.signals), self.rank, store)
        self.monitor.install()
        self.bg = writer.BackgroundWriter()
        self._staging = HostStaging()
        self.start_step: int | None = None
        self.last_saved: int | None = None
        self.step_seconds: float | None = None
        self.save_seconds: float | None = None
        """Measured time of the last save as if it were synchronous (copy + write + commit)."""
        self.stall_seconds: float | None = None
        """How long the last save held the training loop."""
        self._pending: tuple[int, float] | None = None
        self._warned_deadline = False
        self._closed = False

    # --- resume -------------------------------------------------------------------
    def resume(self) -> int:
        """Load the latest complete checkpoint (collective); returns the step to start from."""
        if self.start_step is None:
            # As many files at once as a save writes: on one disk, reading several files
            # at once interleaves them and reads slower than one after the other.
            self.start_step = loader.resume(self.storage, self.state, self.ranks,
                                            self.cfg.io_threads or 1)
            self.last_saved = self.start_step or None
        return self.start_step

    # --- the loop -------------------------------------------------------------------
    def steps(self, total: int) -> Iterator[int]:
        """Yield the steps still to run; save every ``every`` steps; stop on preemption."""
        start = self.resume()
        hb = heartbeat.current()
        for step in range(start, total):
            t0 = time.perf_counter()
            yield step
            self.step_seconds = time.perf_counter() - t0
            if not self.bg.busy:
                self._account_finished()
            done = step + 1
            hb.step(step)
            self.check_preemption(done)
            self.maybe_save(done)
        self.finish()
        self.close()

    def maybe_save(self, step: int) -> bool:
        """Save if ``step`` (completed steps) is a multiple of ``every``; True if it did."""
        if self.cfg.every and step % self.cfg.every == 0 and step != self.last_saved:
            self.save(step, reason="periodic")
            return True
        return False

    def check_preemption(self, step: int) -> None:
        """Step-boundary agreement; on preemption save ``step``, commit and exit (collective)."""
        agreed, first = self.monitor.agree(self.ranks.group)
        if not agreed:
            return
        grace = self.cfg.grace_period if self.cfg.grace_period is not None else 0.0
        remaining = (first + grace - time.time()) if first else None
        predicted = self.save_seconds
        who = self.monitor.remote or f"{self.rank}:{self.monitor.signum}"
        log.warning("rank %d: preemption (%s): saving step %d; %s s of grace left, last save "
                    "took %s s", self.rank, who, step, _fmt(remaining), _fmt(predicted))
        if remaining is not None and predicted is not None and predicted > remaining:
            log.warning("rank %d: the save (~%.1f s) may not finish within the %.1f s left of "
                        "the grace period", self.rank, predicted, remaining)
        if step != self.last_saved:
            self.save(step, reason="preemption", block=True)
        self.finish()
        if self.rank == 0:
            log.warning("preempted: checkpoint of step %d committed; exiting %d",
                        step, self.cfg.exit_code)
            print(f"fi-dist: preempted: checkpoint of step {step} committed, exit "
                  f"{self.cfg.exit_code}", flush=True)
        heartbeat.current().state("preempted", checkpoint_step=step)
        # Keep catching the signals until the process is gone: the node agent forwards
        # SIGTERM to every worker when the first one exits, and the default action
        # would turn this clean 143 into "killed by SIGTERM".
        self.close(restore_signals=False)
        raise SystemExit(self.cfg.exit_code)

    @property
    def preempted(self) -> bool:
        """This rank knows of a preemption signal (not yet agreed)."""
        return self.monitor.requested

    # --- saving -----------------------------------------------------------------------
    def save(self, step: int, *, reason: str = "manual", block: bool | None = None) -> None:
        """Save ``step`` (collective: every rank calls it with the same step).

        Copies the state to host memory, then writes it (in the background when
        ``async_save`` and not ``block``). At most one save is in flight: a new one
        first waits for the previous.
        """
        block = (not self.cfg.async_save) if block is None else block
        t0 = time.perf_counter()
        self.bg.wait()
        self._account_finished()
        final = self.storage.join(layout.step_dirname(step))
        if self.storage.atomic_rename:
            workdir = self.storage.join(f"{layout.TMP_PREFIX}{layout.step_dirname(step)}-"
                                        f"{self.nonce}")
            prefix = ""
        else:
            workdir, prefix = final, f"{self.nonce}/"
        meta = {"reason": reason, "time": time.time(), "prefix": prefix}
        threads = self.cfg.io_threads or 1
        # A blocking save stalls the loop anyway: write the live host state, skip the copy.
        files = self._host_files(copy=not (block or self.sharded))
        plan = writer.SavePlan(step, self.rank, self.world_size, self.nonce, workdir, final,
                               files, "sharded" if self.sharded else "replicated", meta,
                               prefix, threads)
        copy_seconds = time.perf_counter() - t0

        def job() -> None:
            writer.run_save(self.storage, self.exchange, plan, self._retention)

        if block or self.sharded:
            # Sharded state goes through DCP (collective, on this thread) while this
            # rank's own files are written beside it.
            alongside = (lambda: sharded.save(self.storage, self.state, workdir, prefix,
                                              threads)) if self.sharded else None
            writer.run_save(self.storage, self.exchange, plan, alongside=alongside)
            writer.wait_committed(self.exchange, self.nonce, step, self.cfg.commit_timeout)
            self.save_seconds = time.perf_counter() - t0
            self.stall_seconds = self.save_seconds
            self._check_deadline()
            if self.rank == 0:
                # Deleting old checkpoints is no part of this one: the loop goes on while
                # it runs; the next save (or finish) waits for it.
                self.bg.submit(self._retention, step)
        else:
            self._pending = (step, copy_seconds)
            self.bg.submit(job, step)
            self.stall_seconds = time.perf_counter() - t0  # all the loop waited for
        self.last_saved = step

    def _host_files(self, copy: bool) -> dict[str, Any]:
        """This rank's files of a save: name -> state in host memory.

        ``copy``: snapshot host tensors too (async); device tensors are always staged.
        """
        def snap(name: str, obj: Any, always: bool = False) -> Any:
            return self._staging.snapshot(obj, (name,), copy_host=copy or always)

        st, ext = self.state, tensorfile.SUFFIX
        files: dict[str, Any] = {}
        if not self.sharded and self.rank == 0:
            files[f"model{ext}"] = snap("model", st.module.state_dict())
            if st.optimizer is not None:
                files[f"optimizer{ext}"] = snap("optimizer", state_of(st.optimizer))
        # Small, and their state dicts share lists with the live objects: always copied.
        if self.rank == 0 and st.scheduler is not None:
            files[f"scheduler{ext}"] = snap("scheduler", state_of(st.scheduler), always=True)
        rank_state: dict[str, Any] = {"rng": portable_rng(rng_state())}
        if st.data_state is not None:
            rank_state["data"] = state_of(st.data_state)
        files[f"rank-{self.rank:05d}{ext}"] = snap("rank", rank_state, always=True)
        self._staging.sync()
        return files

    def _account_finished(self) -> None:
        if self._pending is not None and self.bg.last_seconds is not None:
            step, copy_seconds = self._pending
            self.save_seconds = copy_seconds + self.bg.last_seconds
            self._pending = None
            self._check_deadline()

    def _check_deadline(self) -> None:
        if self._warned_deadline or self.save_seconds is None:
            return
        need = self.save_seconds + (self.step_seconds or 0.0)
        if need > float(self.cfg.grace_period or 0):
            self._warned_deadline = True
            log.warning("rank %d: one step (%.2f s) + one save (%.2f s) = %.2f s exceeds the "
                        "%.1f s grace period: a preemption would be killed before its save "
                        "commits", self.rank, self.step_seconds or 0.0, self.save_seconds, need,
                        self.cfg.grace_period)

    def _retention(self) -> None:
        if self.cfg.keep_last is None:
            return
        try:
            complete, _ = layout.scan(self.storage)
            for cand in complete[self.cfg.keep_last:]:
                layout.remove(self.storage, cand.path)
        except Exception as exc:  # never fail a committed save over cleanup
            log.warning("checkpoint retention failed: %s", exc)

    # --- ending ------------------------------------------------------------------------
    def wait(self) -> None:
        """Wait for the save in flight (this rank's part; rank 0: the commit)."""
        self.bg.wait()
        self._account_finished()

    def finish(self) -> None:
        """Wait until the last save is written AND committed on every rank."""
        self.wait()
        if self.last_saved is not None and self.last_saved != self.start_step:
            writer.wait_committed(self.exchange, self.nonce, self.last_saved,
                                  self.cfg.commit_timeout)

    def close(self, restore_signals: bool = True) -> None:
        """Stop the watcher and restore the signal handlers (idempotent)."""
        if not self._closed:
            self._closed = True
            self.monitor.uninstall(restore_signals)
            self.bg.close()


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"
