"""fi-dist eval on a paused --debug job: every rank's value of an expression, grouped."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.dap_client import JobClient
from tests.support.debug_job import cli, marker_line

pytestmark = pytest.mark.slow


def test_eval_shows_which_ranks_differ_beside_an_attached_ide(debug_job) -> None:
    job = debug_job(2, 2, {"JOB_MODE": "all_bp"}, extra=("--wait-for-client",))
    client = JobClient(job.config)
    try:
        client.attach()
        children = client.wait_children(4, timeout=120)
        for child in children.values():
            child.wait_event("stopped", timeout=120)  # fi_dist.breakpoint(): all stopped

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(cli("eval", *args), cwd=job.workdir, capture_output=True,
                                  text=True, timeout=120)

        line = marker_line(job.script, "ALL-BP-LINE") + 1
        same = run("x")
        assert same.returncode == 0, same.stderr
        assert same.stdout.splitlines()[0] == f"fi-dist eval 'x' in main at debug_job.py:{line}"
        assert "0-3" in same.stdout and same.stdout.rstrip().endswith("all 4 ranks agree")
        assert "tensor float64 (4,) checksum" in same.stdout

        differ = run("x + (rank == 3)")
        assert differ.returncode == 0, differ.stderr
        rows = {r.split()[0]: r.split() for r in differ.stdout.splitlines()[2:-1]}
        assert set(rows) == {"0-2", "3"}, differ.stdout
        assert rows["0-2"][1] == "0" and rows["3"][1] == "1", differ.stdout  # max |x - rank 0|
        assert differ.stdout.rstrip().endswith("2 distinct values: rank 3 differs from rank 0")

        data = json.loads(run("rank", "--json").stdout)
        assert [g["ranks"] for g in data["groups"]] == [[0], [1], [2], [3]]
        assert [g["value"]["repr"] for g in data["groups"]] == ["0", "1", "2", "3"]
        assert [g["max_abs_diff_to_rank0"] for g in data["groups"]] == ["0", "1", "2", "3"]

        bad = run("no_such_name", "--rank", "1")
        assert bad.returncode == 0 and "NameError" in bad.stdout, bad.stdout
        # The IDE's own views of the ranks are untouched by eval's side views.
        assert client.top_frame(3)["line"] == line
    finally:
        client.close()
    assert job.wait(180) == 0, job.output()[-3000:]
