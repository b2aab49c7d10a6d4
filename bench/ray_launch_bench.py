"""Ray launcher vs local launcher: wall time of a whole 2x2 run, and training steps/s.

Both run examples/ddp_train.py unchanged through the CLI, interleaved (bench/harness.py);
the Ray side starts its own single-node loopback Ray each time (what
``fi-dist run --launcher ray`` does without RAY_ADDRESS), so its wall time includes
``ray.init``, placement and actor start-up.

    python bench/ray_launch_bench.py [--reps 3] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import re
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


def _run(launcher: str, steps: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with tempfile.TemporaryDirectory() as work:
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "fi_dist.cli", "run", "--plain", "--launcher", launcher,
             "--nnodes", "2", "--nproc-per-node", "2", "--master-port", "0", EXAMPLE, "--",
             "--steps", str(steps)],
            cwd=work, env=env, capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{launcher} run failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    rates = [int(n) / float(s) for n, s in _DONE.findall(out.stdout)]
    return {"wall_s": wall, "steps_per_s": sum(rates) / len(rates)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args()
    results = interleave(args.reps, {"local": lambda: _run("local", args.steps),
                                     "ray": lambda: _run("ray", args.steps)})
    print(report(results, "local", "ray", {"wall_s": "start-up overhead of Ray, informational",
                                           "steps_per_s": "~1.0 (same ranks, same gloo)"}))


if __name__ == "__main__":
    main()
