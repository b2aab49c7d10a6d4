"""@interactive_pytorch costs, as ratios against a baseline measured in the same run.

    python bench/flyte_bench.py [--calls 200000] [--jobs 1]

* off: a decorated function with the decorator off vs the same undecorated function
  (per-call cost of the switch; the goal is "near zero");
* job (with --jobs N > 0): the example's Elastic task end to end (flytekit local
  execution, 2 ranks) with the decorator off vs on (hub, debugpy in both ranks,
  code-server), median of N runs each, interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench_off(calls: int) -> tuple[float, float]:
    os.environ["FI_DIST_INTERACTIVE"] = "0"
    from fi_dist import interactive_pytorch

    def step(x: int) -> int:
        return x + 1

    wrapped = interactive_pytorch(step)
    base = min(timeit.repeat(lambda: step(1), number=calls, repeat=5)) / calls
    off = min(timeit.repeat(lambda: wrapped(1), number=calls, repeat=5)) / calls
    return base, off


def run_example(interactive: str, folder: Path) -> float:
    env = {**os.environ, "FI_DIST_INTERACTIVE": interactive}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "flyte_workflow.py", "--steps", "6"], cwd=folder, env=env,
                   check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=200_000)
    p.add_argument("--jobs", type=int, default=0)
    a = p.parse_args()
    base, off = bench_off(a.calls)
    print("| metric | baseline | decorated | ratio |")
    print("|---|---|---|---|")
    print(f"| call, decorator off (ns) | {base * 1e9:.0f} | {off * 1e9:.0f} | {off / base:.2f} |")
    if a.jobs:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "flyte_workflow.py").write_text((REPO / "examples" / "flyte_workflow.py")
                                                      .read_text())
            offs, ons = [], []
            for _ in range(a.jobs):
                offs.append(run_example("0", folder))
                ons.append(run_example("1", folder))
            m_off, m_on = statistics.median(offs), statistics.median(ons)
            print(f"| Elastic 2-rank task, wall (s) | {m_off:.1f} | {m_on:.1f} | {m_on / m_off:.2f} |")


if __name__ == "__main__":
    main()
