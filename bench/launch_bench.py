"""Launch -> first step, and steps/s: `fi-dist run` 2x2 vs plain torchrun as two pods.

The baseline is what two PyTorchJob pods run: one `torchrun --node-rank i` per node,
static rendezvous on node 0. Both sides run examples/ddp_train.py unchanged.

    python bench/launch_bench.py [--reps 5] [--steps 300]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import interleave, report

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "examples" / "ddp_train.py")
_DONE = re.compile(r"done: (\d+) steps in ([0-9.]+)s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _measure(procs: list[subprocess.Popen[str]], t0: float) -> dict[str, float]:
    first_step = None
    rates = []
    for p in procs:
        assert p.stdout is not None
        for line in p.stdout:
            if first_step is None and "step 0 loss" in line:
                first_step = time.perf_counter() - t0
            if m := _DONE.search(line):
                rates.append(int(m.group(1)) / float(m.group(2)))
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"run failed with exit {p.returncode}")
    assert first_step is not None and rates
    return {"launch->first step (s)": first_step, "steps/s per rank": sum(rates) / len(rates)}


def torchrun_two_pods(steps: int) -> dict[str, float]:
    port = _free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc-per-node", "2", "--node-rank", str(i), "--master-addr", "127.0.0.1",
             "--master-port", str(port), "--rdzv-backend", "static", EXAMPLE,
             "--steps", str(steps)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    # Read node 1 in a thread-free way: its output is small; drain node 0 first.
    return _measure(procs, t0)


def fi_dist_run(steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, "-m", "fi_dist.cli", "run", "--nnodes", "2", "--nproc-per-node", "2",
             "--master-port", "0", "--plain", EXAMPLE, "--", "--steps", str(steps)],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return _measure([p], t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    results = interleave(args.reps, {
        "torchrun x2": lambda: torchrun_two_pods(args.steps),
        "fi-dist run": lambda: fi_dist_run(args.steps),
    })
    print(f"2 nodes x 2 ranks, {args.steps} steps, {args.reps} interleaved reps, medians")
    print(report(results, "torchrun x2", "fi-dist run",
                 {"launch->first step (s)": "ratio <= 1.15", "steps/s per rank": "ratio >= 0.97"}))


if __name__ == "__main__":
    main()
