"""The hang doctor end to end: real node agents, real gloo ranks, no --debug.

One 2x2 job per scenario (tests/support/hang_job.py): rank 3 sleeping in ``load_batch``
while the others wait in ``all_reduce``; ranks 0-1 in ``all_reduce`` and 2-3 in
``broadcast``; a collective timeout. Plus two light processes (no torch) for the
faulthandler fallback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.hang_job import expected_checksum

pytestmark = pytest.mark.slow


def test_stacks_name_the_rank_that_is_behind_and_do_not_disturb_the_job(
        hang_job, tmp_path: Path) -> None:
    release = tmp_path / "release"
    job = hang_job(2, 2, {"HANG_MODE": "behind", "HANG_RELEASE": str(release)})
    job.wait_in_flight({0, 1, 2})
    waiting_since = time.monotonic()
    reduce_line, load_line = job.line("ALL-REDUCE-LINE"), job.line("LOAD-BATCH-LINE")

    out = job.cli("stacks")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"ranks 0-2 (3): all_reduce <- hang_job.py:{reduce_line} in step" in text, text
    assert f"rank 3 (node 1): load_batch (hang_job.py:{load_line})" in text, text
    diagnosis = text.rstrip().splitlines()[-1]
    assert diagnosis == (
        f"diagnosis: rank 3 is behind: ranks 0-2 wait in all_reduce #6 (hang_job.py:"
        f"{reduce_line} in step); rank 3 completed #5 and is at hang_job.py:{load_line} in "
        "load_batch"), text
    assert "* rank 3" in text and "* ranks 0-2" in text, text  # where they part ways

    data = json.loads(job.cli("stacks", "--json").stdout)
    assert data["diagnosis"]["kind"] == "behind"
    assert (data["diagnosis"]["behind"], data["diagnosis"]["waiting"]) == ([3], [0, 1, 2])
    assert (data["diagnosis"]["op"], data["diagnosis"]["seq"]) == ("all_reduce", 6)
    groups = {tuple(g["ranks"]): g for g in data["groups"]}
    assert set(groups) == {(0, 1, 2), (3,)}
    assert groups[(3,)]["frames"][-1] == {"file": str(job.script), "line": load_line,
                                          "func": "load_batch"}
    rank0 = data["ranks"][0]
    assert rank0["source"] == "python" and rank0["state"] == "running"
    default = next(c for c in rank0["collectives"] if c["group"] == "default")
    assert (default["issued"], default["completed"], default["in_flight"]) == (6, 5, True)
    assert (default["line"], default["func"]) == (reduce_line, "step")

    threads = job.cli("stacks", "--all-threads")
    assert "[prefetch]" in threads.stdout and "[MainThread]" in threads.stdout, threads.stdout

    # fi-dist status asks for stacks once a rank waited 2 s in a collective.
    time.sleep(max(0.0, 2.5 - (time.monotonic() - waiting_since)))
    status = job.cli("status")
    assert status.stdout.rstrip().splitlines()[-1] == diagnosis, status.stdout
    assert json.loads(job.cli("status", "--json").stdout)["diagnosis"] == diagnosis[11:]

    release.touch()
    assert job.wait(180) == 0, job.output()[-3000:]
    assert job.checksum() == expected_checksum(4)


def test_mismatched_collectives_and_the_hang_timeout_end_the_job_with_the_diagnosis(
        hang_job) -> None:
    job = hang_job(2, 2, {"HANG_MODE": "mismatch"}, extra=("--hang-timeout", "15"))
    job.wait_in_flight({0, 1, 2, 3})
    reduce_line, bcast_line = job.line("ALL-REDUCE-LINE"), job.line("BROADCAST-LINE")
    expected = (f"ranks disagree: 0-1 in all_reduce #6 at hang_job.py:{reduce_line} in step, "
                f"2-3 in broadcast #6 at hang_job.py:{bcast_line} in step (mismatched "
                "collectives)")
    data = json.loads(job.cli("stacks", "--json").stdout)
    assert data["diagnosis"]["kind"] == "mismatch" and data["diagnosis"]["text"] == expected

    started = time.monotonic()
    assert job.wait(120) == 124, job.output()[-3000:]  # ended by itself, not retried
    out = job.output()
    assert "made no progress for 15s (--hang-timeout 15)" in out, out[-3000:]
    summary = out[out.index("fi-dist: job FAILED"):]
    root = next(line for line in summary.splitlines() if line.startswith("root cause"))
    assert root.startswith("root cause (first failure): job hung: exit 124: no progress for")
    assert root.endswith(expected), root
    assert "ranks 0-1 (2): all_reduce <- " in summary and "ranks 2-3 (2): broadcast <- " in summary
    record = (job.run_dir() / "hang-0.txt").read_text()
    assert expected in record
    assert time.monotonic() - started < 60


def test_a_collective_timeout_is_reported_as_the_rank_that_is_behind(hang_job) -> None:
    job = hang_job(2, 2, {"HANG_MODE": "behind", "HANG_PG_TIMEOUT": "8"})
    assert job.wait(180) == 1, job.output()[-3000:]
    out = job.output()
    root = next(line for line in out.splitlines() if line.startswith("root cause"))
    # Not the timeout's traceback: which rank the others waited for, and where it was.
    assert root.startswith("root cause (first failure): stuck collective: exit 1: rank "), root
    assert "Timed out" in root, root
    assert root.endswith(f"rank 3 is behind: ranks 0-2 failed in all_reduce #6 (hang_job.py:"
                         f"{job.line('ALL-REDUCE-LINE')} in step); rank 3 completed #5 and is "
                         f"at hang_job.py:{job.line('LOAD-BATCH-LINE')} in load_batch"), root


LIGHT = '''\
import ctypes, os, threading, time
from pathlib import Path
from fi_dist.hang.ledger import Ledger, ensure_hang_dir, ledger_path
from fi_dist.runtime.hang.dumper import StackDumper

# What rank_main's hang.setup installs, without torch (light and quick to start).
rank = int(os.environ["RANK"])
d = ensure_hang_dir(Path(os.environ["FI_DIST_RUN_DIR"]) / "hang")
led = Ledger(ledger_path(d, rank), rank, 0, rank, 2, threading.main_thread().ident)
StackDumper(d, rank, led).install()
print("ready", flush=True)


def load_batch():
    if os.environ.get("HOLD_GIL"):
        ctypes.PyDLL(None).sleep(60)  # C code that keeps the GIL: the dump thread cannot run
    time.sleep(60)


load_batch()
'''


def test_a_rank_holding_the_gil_is_dumped_by_faulthandler(tmp_path: Path) -> None:
    from fi_dist.hang.collect import collect

    script = tmp_path / "light.py"
    script.write_text(LIGHT)
    procs = []
    try:
        for rank in (0, 1):
            env = {**os.environ, "RANK": str(rank), "FI_DIST_RUN_DIR": str(tmp_path)}
            if rank == 1:
                env["HOLD_GIL"] = "1"
            p = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                 text=True)
            procs.append(p)
        for p in procs:
            assert p.stdout is not None and p.stdout.readline() == "ready\n"
        time.sleep(0.5)  # both inside load_batch
        report = collect(tmp_path / "hang", "light", timeout=1.0)
        by_rank = {d.rank: d for d in report.dumps}
        assert (by_rank[0].source, by_rank[1].source) == ("python", "faulthandler")
        for d in by_rank.values():
            assert d.main is not None and d.main.frames[-1].func == "load_batch", d
        assert "did not answer" in by_rank[1].note
        assert (tmp_path / "hang").stat().st_mode & 0o777 == 0o700
        assert all((tmp_path / "hang" / n).stat().st_mode & 0o777 == 0o600
                   for n in os.listdir(tmp_path / "hang") if not n.startswith("."))
    finally:
        for p in procs:
            p.kill()
            p.wait()
