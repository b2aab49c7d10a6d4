"""Debug hub and launch cost of ``--network netns`` against loopback, in one run.

* **P3** one attach -> every rank stopped, and **P4** first rank stopped -> all stopped,
  for 16 light ranks (4 nodes x 4) behind one hub: loopback (hub and ranks on this
  machine's loopback, the IDE straight on the hub), netns (hub in node 0's namespace,
  each node's ranks in their node's namespace, the IDE through the host's port forward)
  and netns with 2 ms added to everything each node sends (so 4 ms more per round trip
  between nodes). Goals: P3 <= 0.5 s, P4 <= 30 ms + one round trip.
* **launch**: ``fi-dist run`` 2x2 of examples/ddp_train.py, launch -> first step,
  netns / loopback, interleaved. Goal <= 1.10.

    python bench/netns_bench.py [--reps 3] [--launch-reps 3] [--world 16]

Needs root (network namespaces).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench scripts use the tests' helpers (tests.support)
sys.path.insert(0, str(REPO / "bench"))

from debug_bench import _p34_session, _wait_registered  # noqa: E402
from harness import interleave, report  # noqa: E402

from fi_dist.launchers.local import free_port  # noqa: E402
from fi_dist.launchers.netem import Shape, Shaper  # noqa: E402
from fi_dist.launchers.netns import Network  # noqa: E402
from fi_dist.launchers.port_forward import PortForward  # noqa: E402
from tests.support.debug_job import StandaloneHub, marker_line  # noqa: E402

EXAMPLE = str(REPO / "examples" / "ddp_train.py")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def p34(world: int, reps: int, work: Path, delay_ms: float | None) -> tuple[float, list[float]]:
    """P3 and the P4 samples; ``delay_ms`` None: loopback, else netns with that delay."""
    nodes = (world + 3) // 4
    net = forward = shaper = None
    try:
        if delay_ms is None:
            hub = StandaloneHub(work)
            hub.start_ranks(world, per_node=4)
        else:
            names = ["bench-master-0", *(f"bench-worker-{k}" for k in range(nodes - 1))]
            net = Network(names, work / "net")
            port = free_port()
            hub = StandaloneHub(work, wrap=net.enter_argv(0, []), rank_host="10.244.0.2",
                                ide_port=port)
            network = net
            forward = PortForward(port, lambda: network.connect_in(0, ("127.0.0.1", port)))
            if delay_ms:
                shaper = Shaper(net)
                for k in range(nodes):
                    shaper.set(k, Shape(delay_ms=delay_ms))
            wrap: Callable[[int], list[str]] = lambda k: network.enter_argv(k, [])  # noqa: E731
            hub.start_ranks(world, per_node=4, master_addr="bench-master-0", wrap=wrap)
        try:
            work_line = marker_line(hub.script, "LIGHT-WORK-LINE")
            last_line = marker_line(hub.script, "LIGHT-LAST-LINE")
            _wait_registered(hub, world)
            return _p34_session(hub, world, work_line, last_line, reps)
        finally:
            hub.stop()
    finally:
        for part in (forward, shaper, net):
            if part is not None:
                part.close()


def run_p34(world: int, reps: int) -> None:
    os.environ["LIGHT_SLEEP"] = "0.001"
    configs = {"loopback": None, "netns 0 ms": 0.0, "netns +2 ms": 2.0}
    rows = []
    for name, delay in configs.items():
        with tempfile.TemporaryDirectory() as tmp:
            before = loadavg()
            p3, p4 = p34(world, reps, Path(tmp), delay)
            rows.append((name, p3, p4, before, loadavg()))
            print(f"{name}: P3 {p3:.3f} s, P4 median {statistics.median(p4) * 1000:.1f} ms "
                  f"runs {[round(v * 1000, 1) for v in p4]} (load {before} -> {loadavg()})",
                  flush=True)
    print(f"\n{world} light ranks ({world // 4} nodes x 4), {reps} P4 reps")
    print(f"{'network':<14}{'P3 s':>8}{'P4 ms':>8}  goal (P3 <= 0.5 s; P4 <= 30 ms + RTT)  load")
    for name, p3, p4, before, after in rows:
        rtt = 4.0 if "+2" in name else 0.0
        ok = p3 <= 0.5 and statistics.median(p4) * 1000 <= 30 + rtt
        print(f"{name:<14}{p3:>8.3f}{statistics.median(p4) * 1000:>8.1f}  "
              f"{'met' if ok else 'NOT met'} (P4 goal {30 + rtt:g} ms)  {before} -> {after}")


def launch(network: str, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [sys.executable, "-m", "fi_dist.cli", "run", "--network", network, "--nnodes", "2",
             "--nproc-per-node", "2", "--master-port", "0", "--plain", EXAMPLE, "--",
             "--steps", str(steps)],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        first = None
        assert p.stdout is not None
        for line in p.stdout:
            if first is None and "step 0 loss" in line:
                first = time.perf_counter() - t0
        if p.wait() != 0 or first is None:
            raise RuntimeError(f"fi-dist run --network {network} failed")
        return {"launch->first step (s)": first,
                "whole run (s)": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="P4 repetitions per configuration")
    ap.add_argument("--launch-reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--skip-p34", action="store_true")
    ap.add_argument("--skip-launch", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"load {loadavg()}", flush=True)
    if not args.skip_p34:
        run_p34(args.world, args.reps)
    if not args.skip_launch:
        before = loadavg()
        results = interleave(args.launch_reps, {
            "loopback": lambda: launch("loopback", args.steps),
            "netns": lambda: launch("netns", args.steps),
        })
        print(f"\nfi-dist run 2x2, {args.steps} steps, {args.launch_reps} interleaved reps, "
              f"medians (load {before} -> {loadavg()})")
        print(report(results, "loopback", "netns",
                     {"launch->first step (s)": "ratio <= 1.10",
                      "whole run (s)": "informational"}))
        for name, series in results.items():  # the spread: a loaded machine is noisy
            first = series["launch->first step (s)"].values
            print(f"  {name} launch->first step runs: {[round(v, 2) for v in first]}")


if __name__ == "__main__":
    main()
