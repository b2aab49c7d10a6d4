"""GPU check of the idle culler: NVML calls a busy matmul loop busy and a sleeping one idle.

    python bench/gpu_idle_check.py [--device 0] [--window 5] [--interval 0.5]

One child process holds a CUDA context on ``--device``: it runs a matmul loop for
``window + 3`` seconds, then sleeps (context and memory still held: a forgotten
session). The real NVML sampler and the real policy watch it. Pass when no STOP comes
while it computes and STOP comes within window + 2 sample periods (+ NVML's own
averaging period) of the loop's end. Prints the readings and the NVML sample cost.

Without a usable GPU (no driver, no device, CPU-only torch) it says so in one line and
runs the same scenario on the CPU sampler instead (a spinning then sleeping process),
so the check still exercises the policy; it exits 0 when that passes.
Exit codes: 0 pass, 1 fail.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time

from fi_dist.runtime.idle.policy import Action, Observation, Policy, WatchState, decide
from fi_dist.runtime.idle.sampler import CpuSampler, NvmlSampler

NVML_AVERAGING = 1.0
"""NVML's utilisation is averaged over 1/6 s to 1 s depending on the board."""

GPU_CHILD = """
import sys, time, torch
busy = float(sys.argv[1])
a = torch.randn(4096, 4096, device="cuda")
end = time.time() + busy
while time.time() < end:
    for _ in range(8):
        b = a @ a
    torch.cuda.synchronize()
print("BUSY_END", time.time(), flush=True)
time.sleep(600)
"""

CPU_CHILD = """
import sys, time
busy = float(sys.argv[1])
end = time.time() + busy
while time.time() < end:
    sum(range(10000))
print("BUSY_END", time.time(), flush=True)
time.sleep(600)
"""


def watch(sampler, pid: int, child: subprocess.Popen[str], policy: Policy, busy: float,
          slack: float) -> bool:
    """Sample until STOP or a deadline; True when the verdicts match the expectation."""
    state = WatchState()
    readings: list[tuple[float, list]] = []
    costs = []
    stop_at = None
    deadline = time.time() + busy + policy.timeout + 4 * policy.interval + slack + 10
    busy_end = None
    os.set_blocking(child.stdout.fileno(), False)
    while time.time() < deadline:
        line = child.stdout.readline()
        if line.startswith("BUSY_END"):
            busy_end = float(line.split()[1])
        t0 = time.perf_counter()
        samples = sampler.sample({0: pid})
        costs.append(time.perf_counter() - t0)
        now = time.time()
        state, verdict = decide(policy, state, Observation(now, tuple(
            s.utilisation for s in samples)))
        readings.append((now, samples))
        if verdict.action is Action.STOP:
            stop_at = now
            break
        time.sleep(policy.interval)
    busy_utils = [s.utilisation for t, ss in readings for s in ss
                  if busy_end is None or t < busy_end]
    idle_utils = [s.utilisation for t, ss in readings for s in ss
                  if busy_end is not None and t > busy_end + policy.interval + slack]
    last = readings[-1][1][0] if readings and readings[-1][1] else None
    print(f"  busy phase: {len(busy_utils)} samples, utilisation mean "
          f"{statistics.fmean(busy_utils or [0]):.1f} % min {min(busy_utils or [0]):.1f} %")
    print(f"  idle phase: {len(idle_utils)} samples, utilisation max "
          f"{max(idle_utils or [0]):.1f} %")
    if last is not None and last.memory_used is not None:
        print(f"  last reading: memory {last.memory_used / 2**30:.1f}/"
              f"{last.memory_total / 2**30:.1f} GiB, power {last.power_w} W")
    print(f"  sample cost: median {statistics.median(costs) * 1e3:.2f} ms")
    if busy_end is None:
        print("  FAIL: the child never finished its busy phase")
        return False
    if stop_at is None:
        print(f"  FAIL: no STOP within {deadline - busy_end:.1f}s of the loop's end")
        return False
    latency = stop_at - busy_end
    bound = policy.timeout + 2 * policy.interval + slack
    ok = stop_at >= busy_end and latency <= bound
    print(f"  busy loop: never idle ({'ok' if stop_at >= busy_end else 'FAIL: STOP while busy'})")
    print(f"  sleeping: STOP {latency:.2f}s after the loop ended (window {policy.timeout:g}s, "
          f"bound {bound:.2f}s): {'ok' if ok else 'FAIL'}")
    return ok


def run_child(code: str, busy: float, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, str(busy)], env=env,
                            stdout=subprocess.PIPE, text=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="0", help="NVML index or UUID of the GPU to check")
    p.add_argument("--window", type=float, default=5.0, help="idle timeout in seconds")
    p.add_argument("--interval", type=float, default=0.5, help="sample period in seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    policy = Policy(timeout=args.window, interval=args.interval, warn_lead=1.0)
    busy = args.window + 3.0
    sampler = NvmlSampler(visible=args.device)
    gpu_reason = None if sampler.available else sampler.reason
    if gpu_reason is None:
        try:
            import torch

            if not torch.cuda.is_available():
                gpu_reason = f"torch {torch.__version__} has no usable CUDA"
        except ImportError:
            gpu_reason = "torch is not installed"
    env = dict(os.environ)
    if gpu_reason is None:
        print(f"gpu_idle_check: NVML device {args.device}: matmul loop {busy:g}s, then sleep")
        env.update(CUDA_DEVICE_ORDER="PCI_BUS_ID", CUDA_VISIBLE_DEVICES=args.device)
        child = run_child(GPU_CHILD, busy, env)
        slack = NVML_AVERAGING
    else:
        print(f"gpu_idle_check: no GPU to check ({gpu_reason}); GPU check SKIPPED. "
              "Running the same scenario on the CPU sampler instead.")
        sampler = CpuSampler()
        child = run_child(CPU_CHILD, busy, env)
        slack = 0.0
    try:
        ok = watch(sampler, child.pid, child, policy, busy, slack)
    finally:
        child.kill()
        child.wait()
        sampler.close()
    print(f"gpu_idle_check: {'PASS' if ok else 'FAIL'}"
          f"{' (CPU fallback; no GPU checked)' if gpu_reason else ''}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
