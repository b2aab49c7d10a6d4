"""P7: idle detection latency and sampler overhead of the culler (CPU sampler).

    python bench/idle_bench.py [--trials 6] [--window 2] [--interval 0.25] [--ranks 8]

Latency: a real child process spins for a random 1.0-1.5 s, then sleeps; the real
IdleWatcher (run directory, CPU sampler, policy; dry run, so nothing is signalled)
ticks every ``interval``. Latency = STOP - end of the spin, reported as
(latency - window) / interval, the number of sample periods beyond the window
(goal <= 2).

Overhead: CPU time of one watcher tick (read every rank file, sample ``--ranks`` real
processes, decide, write the node's idle file), as a share of one core at the default
10 s interval and at 1 s; the baseline is the wall time of the same interval (goal
< 0.5 % of one core).
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fi_dist.rundir import RunDir
from fi_dist.runtime.idle.sampler import CpuSampler
from fi_dist.runtime.idle.watcher import IdleWatcher
from fi_dist.spec import IdleSpec

SPIN_THEN_SLEEP = """
import sys, time
end = time.time() + float(sys.argv[1])
while time.time() < end:
    sum(range(10000))
print(time.time(), flush=True)
time.sleep(600)
"""


def latency_trial(root: Path, window: float, interval: float, spin: float) -> float:
    child = subprocess.Popen([sys.executable, "-c", SPIN_THEN_SLEEP, str(spin)],
                             stdout=subprocess.PIPE, text=True)
    try:
        run = RunDir(root)
        run.write_rank(0, node=0, pid=child.pid, state="running")
        spec = IdleSpec(enabled=True, timeout=window, interval=interval, warn_lead=0.0,
                        dry_run=True, sampler="cpu")
        w = IdleWatcher(spec, run, 0, CpuSampler(), [])
        # Sample on a fixed grid, like the watcher thread's Event.wait(interval).
        start = time.time()
        k = 0
        while not any(e.kind == "stop" for e in w.events):
            w.tick()
            k += 1
            time.sleep(max(start + k * interval - time.time(), 0.0))
        stop = next(e.time for e in w.events if e.kind == "stop")
        busy_end = float(child.stdout.readline())
        return stop - busy_end
    finally:
        child.kill()
        child.wait()


def overhead(root: Path, ranks: int, ticks: int) -> float:
    """CPU seconds of one watcher tick over ``ranks`` real sleeping processes."""
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            for _ in range(ranks)]
    try:
        run = RunDir(root)
        for r, k in enumerate(kids):
            run.write_rank(r, node=0, pid=k.pid, state="running", step=r, step_time=time.time())
        spec = IdleSpec(enabled=True, timeout=1800, interval=10, sampler="cpu")
        w = IdleWatcher(spec, run, 0, CpuSampler(), [])
        w.tick()
        t0 = time.process_time()
        for _ in range(ticks):
            w.tick()
        return (time.process_time() - t0) / ticks
    finally:
        for k in kids:
            k.kill()
            k.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--ticks", type=int, default=200)
    args = p.parse_args(argv)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        periods = []
        for i in range(args.trials):
            lat = latency_trial(Path(tmp) / f"lat{i}", args.window, args.interval,
                                1.0 + rng.random() * 0.5)
            periods.append((lat - args.window) / args.interval)
        cost = overhead(Path(tmp) / "ovh", args.ranks, args.ticks)
    print(f"P7 detection latency: window {args.window:g}s, sample period {args.interval:g}s, "
          f"{args.trials} trials")
    print(f"  beyond the window: mean {statistics.fmean(periods):.2f}, max {max(periods):.2f} "
          "sample periods (goal <= 2)")
    print(f"sampler overhead: one tick over {args.ranks} ranks = {cost * 1e3:.3f} ms CPU")
    for interval in (10.0, 1.0):
        print(f"  at a {interval:g}s interval: {100 * cost / interval:.4f} % of one core "
              "(goal < 0.5 %)")
    ok = max(periods) <= 2.0 and cost / 10.0 < 0.005
    print(f"idle_bench: {'PASS' if ok else 'MISSED A GOAL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
