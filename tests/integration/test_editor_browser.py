"""The whole editor flow in a real browser: ``fi-dist run --debug --code-server`` on 2x2,
the code-server it starts (with the fi-dist extension, installed offline), Debian's
chromium driven by playwright-core (``tests/support/browser/editor_flow.js``).

Three runs: Disconnect with a rank session selected, Continue, and a post-mortem on the
last rank. Screenshots of each run are kept under the test's tmp dir
(``browser-shots/<scenario>/``, named on failure); ``ranks-view.png`` is the README's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import REPO
from tests.support.debug_job import DebugJob, checksum, cli, marker_line, write_job

pytestmark = pytest.mark.timeout(300)

CHROMIUM = Path("/usr/bin/chromium")
NODE_MODULES = REPO / "node-tools" / "node_modules"
FLOW = REPO / "tests" / "support" / "browser" / "editor_flow.js"


def _need_tools() -> None:
    missing = [str(p) for p in (CHROMIUM, NODE_MODULES / "playwright-core") if not p.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        pytest.fail(f"the browser test needs {', '.join(missing)}: run `make browser-setup` "
                    "(scripts/install_browser.sh, scripts/install_node_tools.sh)")


class Baseline:
    """The same job on 2x2 without --debug, run beside the browser runs."""

    def __init__(self, work: Path) -> None:
        script = write_job(work)
        self.proc = subprocess.Popen(cli("run", "--plain", "--nnodes", "2", "--nproc-per-node",
                                         "2", "--master-port", "0", str(script)),
                                     cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._sum: str | None = None

    def checksum(self) -> str:
        if self._sum is None:
            out, _ = self.proc.communicate(timeout=240)
            assert self.proc.returncode == 0, out
            self._sum = checksum(out)
        return self._sum


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory):
    _need_tools()
    base = Baseline(tmp_path_factory.mktemp("baseline"))
    yield base
    if base.proc.poll() is None:
        base.proc.kill()
        base.proc.wait()


def _editor(job: DebugJob, timeout: float = 120) -> dict[str, Any]:
    """The job's code-server (node 0 writes editor.json once it answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = job.run_dir() / "editor.json"
        if path.exists():
            return json.loads(path.read_text())
        assert job.proc.poll() is None, job.output()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"no code-server after {timeout}s:\n{job.output()[-3000:]}")


def _browse(job: DebugJob, scenario: str, shots: Path, line: int | None) -> list[dict]:
    """Run one scenario in chromium; its JSON lines. Fails with the screenshots' path."""
    t0 = time.monotonic()
    editor = _editor(job)
    print(f"code-server up after {time.monotonic() - t0:.1f}s more", file=sys.stderr)
    cfg = {"url": editor["url"], "password": Path(editor["password_file"]).read_text().strip(),
           "file": str(job.script), "line": line, "shots": str(shots), "world": 4,
           "perNode": 2}
    cfg_path = shots.parent / f"{scenario}.json"
    shots.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(json.dumps(cfg))
    out = subprocess.run(["node", str(FLOW), scenario, str(cfg_path)], capture_output=True,
                         text=True, timeout=240,
                         env={**os.environ, "NODE_PATH": str(NODE_MODULES)})
    steps = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    print(f"{scenario}: {time.monotonic() - t0:.1f}s; screenshots in {shots}", file=sys.stderr)
    for step in steps:
        print(f"  {step}", file=sys.stderr)
    assert out.returncode == 0 and steps and steps[-1].get("done") == scenario, (
        f"browser scenario {scenario!r} failed; screenshots in {shots}\n{out.stdout[-4000:]}"
        f"\n{out.stderr[-2000:]}\njob output:\n{job.output()[-3000:]}")
    return steps


def _start(debug_job, env: dict[str, str]) -> DebugJob:
    t0 = time.monotonic()
    job = debug_job(2, 2, env, extra=("--wait-for-client", "--code-server",
                                      "--code-server-port", "0"))
    print(f"hub up after {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return job


@pytest.mark.parametrize("scenario", ["disconnect", "continue"])
def test_attach_all_ranks_in_the_browser(scenario: str, debug_job, baseline: Baseline,
                                         tmp_path: Path) -> None:
    """A breakpoint only the last rank reaches, "fi-dist: attach all ranks" from the Run
    and Debug view: 4 rank sessions paused in rank order, the Ranks view with every
    rank's state, ``dist.get_rank()`` evaluated in two sessions; then Disconnect (or
    Continue) with a RANK session selected resumes every rank and the job ends with the
    checksum of a run without --debug."""
    # The others spin 6 s from step 2 on; the pause lands within milliseconds and the time
    # paused counts, so after the Continue they go straight on.
    job = _start(debug_job, {"JOB_MODE": "break", "JOB_HOLD": "6"})
    shots = tmp_path / "browser-shots" / scenario
    steps = _browse(job, scenario, shots, marker_line(job.script, "LAST-RANK-LINE"))
    by = {s["step"]: s for s in steps}
    assert by["evaluated"]["rank 3 (node 1)"] == "3" and by["evaluated"]["rank 0 (node 0)"] == "0"
    rows = dict(by["ranks-view"]["rows"])
    assert rows["rank 3 (node 1)"].startswith("paused at debug_job.py:")
    assert list(rows) == [f"rank {r} (node {r // 2})" for r in range(4)]
    assert job.wait(120) == 0, job.output()[-3000:]
    assert checksum(job.output()) == baseline.checksum()
    if scenario == "disconnect":
        assert "session sent disconnect: ending the debug session" in job.output()
    assert (shots / "ranks-view.png").stat().st_size > 10_000


def test_post_mortem_in_the_browser(debug_job, baseline: Baseline, tmp_path: Path) -> None:
    """The last rank raises while the others run Python: the exception widget shows it on
    that rank with the others paused; one Continue ends the job non-zero with that rank's
    exception as root cause, and no other rank stops on the consequences."""
    # The others spin 2 s from step 2 on, where the last rank raises: paused there within
    # milliseconds, and the time paused counts, so after the Continue they reach the next
    # collective at once and fail on the lost peer well inside the 3 s the supervisor gives
    # a failed rank's peers (PEER_EXIT_WINDOW). With 8 s, a quick Continue left them
    # spinning until they were stopped, and the consequence this test checks never came.
    job = _start(debug_job, {"JOB_MODE": "break,raise", "JOB_RAISE_RANK": "3",
                             "JOB_HOLD": "2"})
    shots = tmp_path / "browser-shots" / "post-mortem"
    steps = _browse(job, "post-mortem", shots, None)
    widget = next(s for s in steps if s["step"] == "exception-widget")["text"]
    assert "ValueError" in widget and "boom on rank 3" in widget
    code = job.wait(120)
    out = job.output()
    assert code != 0, out[-3000:]
    assert ("root cause (first failure): rank 3 (node 1): exit 1: ValueError: boom on rank 3"
            in out), out[-3000:]
    assert "a consequence, not stopping in the debugger" in out, out[-3000:]
    record = json.loads((job.run_dir() / "ranks" / "3.json").read_text())
    assert record["state"] == "failed" and record["error"] == "ValueError: boom on rank 3"
