"""End to end: `fi-dist preempt --node 1` during a 2x2 run -> agreed save -> restart -> resume.

The resumed job's ``final checksum:`` must equal an uninterrupted run's: nothing lost,
nothing replayed, RNG and optimizer state restored bit for bit.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.cli import EXAMPLES, fi_dist_cmd

pytestmark = pytest.mark.slow

STEPS = 40


def _train_args(ckpt: Path, step_sleep: float) -> list[str]:
    return ["run", "--master-port", "0", "--nnodes", "2", "--nproc-per-node", "2",
            str(EXAMPLES / "ddp_train.py"), "--", "--steps", str(STEPS),
            "--ckpt-dir", str(ckpt), "--ckpt-every", "4", "--step-sleep", str(step_sleep)]


def _checksum(output: str) -> str:
    found = re.findall(r"final checksum: ([0-9a-f]+)", output)
    assert found, f"no final checksum in:\n{output[-3000:]}"
    return found[-1]


@pytest.mark.timeout(400)
def test_preempt_node1_resumes_bit_exact(workdir: Path, run_cli) -> None:
    ref = run_cli(*_train_args(workdir / "ref-ckpt", 0.0), timeout=180)
    assert ref.returncode == 0, ref.output[-3000:]
    expected = _checksum(ref.stdout)

    seed = random.randrange(1 << 30)
    delay = random.Random(seed).uniform(0.0, 1.5)
    # Slow steps (sleep does not change the maths) leave room for the preemption.
    run, *rest = _train_args(workdir / "ckpt", 0.25)
    cmd = fi_dist_cmd(run, "--max-restarts", "1", *rest)
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ.copy())
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        # Output reaches us in bursts; the first committed checkpoint is a precise cue.
        first = workdir / "ckpt" / "step-0000000004" / "manifest.json"
        deadline = time.monotonic() + 150
        while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert first.exists(), "no first checkpoint:\n" + "".join(lines)[-3000:]
        time.sleep(delay)
        pre = subprocess.run(fi_dist_cmd("preempt", "--node", "1", "--grace", "30"), cwd=workdir,
                             capture_output=True, text=True, timeout=60)
        assert pre.returncode == 0, pre.stdout + pre.stderr
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    t.join(10)
    out = "".join(lines)
    why = f"(seed {seed}, delay {delay:.2f}s)\n{out[-4000:]}"
    assert proc.returncode == 0, why
    saved = re.search(r"preempted: checkpoint of step (\d+) committed", out)
    resumed = re.search(r"resumed from checkpoint step (\d+)", out)
    assert saved and resumed, why
    assert saved.group(1) == resumed.group(1), why  # the restart starts where the save ended
    assert "restarting the job (attempt 1 of 1) after exit 143" in out, why
    assert _checksum(out) == expected, why
