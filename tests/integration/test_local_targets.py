"""`fi-dist run -m MODULE` and `--no-python PROGRAM` end to end (torchrun's -m / --no-python).

Real node agents and ranks: a module runs as ``python -m`` on every rank; a Python
console script runs inside rank_main (so its exceptions are the root cause, with the
user's traceback); any other program replaces the rank process; with --pod-entrypoint
each pod runs the program itself with the operator's env.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

MODULE = """
import sys, torch.distributed as dist
dist.init_process_group("gloo")
t = __import__("torch").ones(1)
dist.all_reduce(t)
print(f"module {__name__} rank {dist.get_rank()} sum {int(t.item())} argv {sys.argv[1:]}")
dist.destroy_process_group()
"""

CONSOLE_SCRIPT = """#!/usr/bin/env python3
import os, sys
if os.environ["RANK"] == "1":
    raise ValueError("console script failed on rank 1")
print("console script rank", os.environ["RANK"], sys.argv[1:])
"""


def fi_dist(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{cwd}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "fi_dist.cli", "run", "--plain",
                           "--master-port", "0", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=200)


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_module_and_programs(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "train.py").write_text(MODULE)
    r = fi_dist(tmp_path, "--nnodes", "2", "-m", "pkg.train", "--", "--lr", "1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for rank in (0, 1):
        assert f"module __main__ rank {rank} sum 2 argv ['--lr', '1']" in r.stdout

    executable(tmp_path / "console-script", CONSOLE_SCRIPT)
    r = fi_dist(tmp_path, "--nproc-per-node", "2", "--no-python", "console-script", "x")
    assert r.returncode == 1, r.stdout[-3000:]
    assert "console script rank 0 ['x']" in r.stdout
    # In-process: rank_main's error file names the user's exception as the root cause.
    assert ("root cause (first failure): rank 1 (node 0): exit 1: ValueError: console "
            "script failed on rank 1") in r.stdout

    executable(tmp_path / "prog.sh", '#!/bin/sh\necho "shell rank $RANK of $WORLD_SIZE: $*"\n')
    for extra in ((), ("--pod-entrypoint",)):
        r = fi_dist(tmp_path, "--nnodes", "2", *extra, "--no-python", "./prog.sh", "a")
        assert r.returncode == 0, r.stdout[-3000:]
        assert "shell rank 1 of 2: a" in r.stdout and "2/2 ranks exited 0" in r.stdout
