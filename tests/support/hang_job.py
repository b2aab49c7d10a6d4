"""A job that hangs on purpose, for the hang doctor's tests, bench and docs.

``HANG_MODE`` picks what happens at step ``HANG_STEP`` (default 5):

* ``behind``: rank ``HANG_LATE`` (default: the last) sleeps inside ``load_batch`` until
  the file ``HANG_RELEASE`` exists (or ``HANG_SLEEP`` seconds pass) while the others
  enter the step's ``all_reduce``;
* ``mismatch``: the lower half of the ranks call ``all_reduce``, the upper half
  ``broadcast`` (the same collective number, different ops);
* ``none``: no hang.

Every value is a dyadic rational, so sums are exact in float64 whatever the reduction
order: :func:`expected_checksum` computes the final checksum without running the job.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from pathlib import Path

import torch

from tests.support.debug_job import BackgroundJob, checksum, cli, marker_line

HANG_SCRIPT = '''\
"""Deterministic gloo job; HANG_MODE picks what happens at step HANG_STEP."""
import hashlib, os, threading, time
from datetime import timedelta

import torch
import torch.distributed as dist

MODE = os.environ.get("HANG_MODE", "none")
STEPS = int(os.environ.get("HANG_STEPS", "8"))
AT = int(os.environ.get("HANG_STEP", "5"))


def load_batch(rank, world, step):
    if MODE == "behind" and step == AT and rank == int(os.environ.get("HANG_LATE", world - 1)):
        release = os.environ.get("HANG_RELEASE", "")
        deadline = time.monotonic() + float(os.environ.get("HANG_SLEEP", "600"))
        while time.monotonic() < deadline and not (release and os.path.exists(release)):
            time.sleep(0.05)  # LOAD-BATCH-LINE
    return torch.full((4,), float(rank), dtype=torch.float64)


def step(x, rank, world, n):
    batch = load_batch(rank, world, n)  # STEP-LOAD-LINE
    if MODE == "mismatch" and n == AT and rank >= world // 2:
        dist.broadcast(x, 0)  # BROADCAST-LINE
    else:
        dist.all_reduce(x)  # ALL-REDUCE-LINE
    return x / world + batch + n


def prefetch():
    while True:
        time.sleep(0.5)  # PREFETCH-LINE


def main():
    threading.Thread(target=prefetch, name="prefetch", daemon=True).start()
    timeout = timedelta(seconds=float(os.environ.get("HANG_PG_TIMEOUT", "600")))
    dist.init_process_group("gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.arange(4, dtype=torch.float64) + rank
    for n in range(STEPS):
        x = step(x, rank, world, n)
        if rank == 0:
            print(f"step {n} done", flush=True)
    dist.barrier()
    if rank == 0:
        digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
        print(f"final checksum: {digest}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
'''


def write_hang_job(directory: Path) -> Path:
    path = directory / "hang_job.py"
    path.write_text(HANG_SCRIPT)
    return path


def expected_checksum(world: int, steps: int = 8) -> str:
    """Rank 0's final checksum, computed without a process (exact arithmetic)."""
    xs = [torch.arange(4, dtype=torch.float64) + r for r in range(world)]
    for n in range(steps):
        total = sum(xs, torch.zeros(4, dtype=torch.float64))
        xs = [total / world + torch.full((4,), float(r), dtype=torch.float64) + n
              for r in range(world)]
    return hashlib.sha256(xs[0].numpy().tobytes()).hexdigest()[:16]


class HangJob(BackgroundJob):
    """``fi-dist run --plain`` of the hang job in the background."""

    def __init__(self, workdir: Path, nnodes: int, nproc: int, env: dict[str, str],
                 extra: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, write_hang_job(workdir), workdir / "hang_job.log", nnodes,
                         nproc, env, extra)

    def line(self, marker: str) -> int:
        return marker_line(self.script, marker)

    def checksum(self) -> str:
        return checksum(self.output())

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cli(*args), cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout)

    def wait_in_flight(self, ranks: set[int], timeout: float = 120) -> None:
        """Until ``ranks`` wait in a collective (their ledgers say so)."""
        from fi_dist.hang.ledger import read_ledgers

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended early:\n{self.output()[-3000:]}")
            with contextlib.suppress(OSError):
                ledgers = read_ledgers(self.run_dir() / "hang")
                waiting = {r for r, v in ledgers.items() if any(s.in_flight for s in v.slots
                                                                if s.kind == "python")}
                if ranks <= waiting:
                    return
            time.sleep(0.2)
        raise AssertionError(f"ranks {sorted(ranks)} never waited in a collective:\n"
                             f"{self.output()[-3000:]}")
