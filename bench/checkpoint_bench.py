"""Checkpoint benchmarks, as ratios against a baseline measured in the same run.

P5  save throughput / raw fsync'd write of the same bytes   (goal >= 0.8)
    async stall on the loop / synchronous save time          (goal <= 0.1)
P6  SIGTERM -> checkpoint committed, in units of (one step + one save)  (goal <= 1)
    steps lost on preemption                                  (goal <= 1)

    python bench/checkpoint_bench.py [--mb 128] [--repeats 3] [--preempt-trials 5]
"""

from __future__ import annotations

import argparse
import io
import os
import random
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from fi_dist.runtime.checkpoint import Checkpointer


def make_model(mb: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    # Model + Adam state (2x) = mb megabytes in total.
    n = int(mb * 2**20 / 4 / 3)
    width = 1024
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False)
                                  for _ in range(max(1, n // (width * width)))])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()
    opt.step()  # materialise Adam's exp_avg / exp_avg_sq
    return model, opt


def raw_write(data: bytes, path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def bench_p5(mb: int, repeats: int, root: Path) -> None:
    model, opt = make_model(mb)
    buf = io.BytesIO()
    torch.save({"m": model.state_dict(), "o": opt.state_dict()}, buf)
    data = buf.getvalue()
    ck = Checkpointer(str(root / "p5"), model=model, optimizer=opt, keep_last=1)
    ck.resume()
    ck.save(1000, block=False)  # the first async save allocates its host buffers
    first_stall = ck.stall_seconds or 0.0
    ck.wait()
    raws, syncs, stalls = [], [], []
    for i in range(repeats):
        raws.append(raw_write(data, root / f"raw-{i}.bin"))
        os.remove(root / f"raw-{i}.bin")
        t0 = time.perf_counter()
        ck.save(2 * i + 1, block=True)
        syncs.append(time.perf_counter() - t0)
        ck.save(2 * i + 2, block=False)
        stalls.append(ck.stall_seconds or 0.0)
        ck.wait()
    ck.close()
    raw, sync, stall = (statistics.median(x) for x in (raws, syncs, stalls))
    print(f"P5 state {len(data) / 2**20:.0f} MiB, median of {repeats}:")
    print(f"   raw fsync'd write {raw:.3f}s ({len(data) / raw / 2**20:.0f} MiB/s); "
          f"sync save {sync:.3f}s ({len(data) / sync / 2**20:.0f} MiB/s)")
    print(f"   save throughput / raw write = {raw / sync:.2f}   (goal >= 0.8); best-of-{repeats} "
          f"{min(raws) / min(syncs):.2f}")
    print(f"   async stall {stall * 1000:.1f} ms / sync save = {stall / sync:.3f}   (goal <= 0.1); "
          f"first async save (allocates host buffers) {first_stall * 1000:.0f} ms "
          f"= {first_stall / sync:.3f}; best-of-{repeats} {min(stalls) / min(syncs):.3f}")


def bench_p6(trials: int, root: Path, step_time: float) -> None:
    ratios, lost = [], []
    for t in range(trials):
        random.seed(t)
        model, opt = make_model(16)
        d = root / f"p6-{t}"
        ck = Checkpointer(str(d), model=model, optimizer=opt, every=5)
        done = [0]
        sent: list[float] = []

        def preempt(sent: list[float] = sent) -> None:
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(random.uniform(1.0, 2.5), preempt)
        timer.start()
        committed_step = None
        try:
            for step in ck.steps(10_000):
                time.sleep(step_time)  # the "training step"
                done[0] = step + 1
        except SystemExit:
            committed_step = ck.last_saved
        elapsed = time.perf_counter() - sent[0]
        at_signal = done[0]
        unit = step_time + (ck.save_seconds or 0.0)
        ratios.append(elapsed / unit)
        lost.append(max(0, at_signal - (committed_step or 0)))
    print(f"P6 over {trials} SIGTERMs at random times, step {step_time * 1000:.0f} ms:")
    print(f"   SIGTERM -> committed / (one step + one save): median {statistics.median(ratios):.2f}, "
          f"max {max(ratios):.2f}   (goal <= 1)")
    print(f"   steps lost: max {max(lost)}   (goal <= 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--preempt-trials", type=int, default=5)
    p.add_argument("--step-time", type=float, default=0.2)
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        bench_p5(a.mb, a.repeats, Path(tmp))
        bench_p6(a.preempt_trials, Path(tmp), a.step_time)


if __name__ == "__main__":
    main()
