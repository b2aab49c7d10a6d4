"""Idle culling end to end: `fi-dist run` with real node agents, ranks and a loopback webhook.

CPU sampler, windows of seconds. Each job is one of the issue's cases: a forgotten
debug session (ranks asleep, client silent) is warned, checkpointed and ended with
IDLE_EXIT_CODE; a computing job and a paused job with an active client are never
ended; a rank spinning without steps is reported hung.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fi_dist import cli, procs, rundir
from fi_dist.runtime.idle import IDLE_EXIT_CODE

pytestmark = pytest.mark.timeout(120)

TIMEOUT, INTERVAL = 3.0, 0.5

PRELUDE = """
import os, signal, sys, time
from fi_dist.runtime import heartbeat
hb = heartbeat.current()
rank = int(os.environ["RANK"])
def work(seconds):
    end = time.time() + seconds
    while time.time() < end:
        sum(range(10000))
"""

FORGOTTEN = PRELUDE + """
def on_term(*_):
    # What the Checkpointer does on SIGTERM: agree, save, exit 143.
    open(f"ckpt-rank{rank}", "w").write(repr(time.time()))
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
for i in range(5):
    work(0.1)
    hb.step(i)
hb.state("paused at train.py:42")
hb.debug_activity()  # a client attached, looked, and was forgotten
open(f"idle-since-rank{rank}", "w").write(repr(time.time()))
time.sleep(90)
"""

COMPUTING = PRELUDE + """
work(2 * 3.0)  # two windows of pure compute, no heartbeat at all
"""

PAUSED_ACTIVE = PRELUDE + """
work(0.3)
hb.state("paused at train.py:42")
end = time.time() + 2 * 3.0
while time.time() < end:  # paused; the human keeps stepping/inspecting
    time.sleep(0.3)
    hb.debug_activity()
"""

HUNG = PRELUDE + """
for i in range(60):
    work(0.05)
    hb.step(i)
if rank == 1:
    work(5.0)  # stuck spinning in a collective: busy, no step
else:
    for i in range(60, 150):
        work(0.05)
        hb.step(i)
"""


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.events.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.events = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def start(workdir: Path, script: str, webhook, *flags: str) -> subprocess.Popen[str]:
    (workdir / "train.py").write_text(script)
    cmd = [sys.executable, "-m", "fi_dist.cli", "run", "--plain", "--master-port", "0",
           "--grace", "5", "--idle-timeout", str(TIMEOUT), "--idle-interval", str(INTERVAL),
           "--idle-warn-lead", "1", "--idle-sampler", "cpu",
           "--idle-webhook", f"http://127.0.0.1:{webhook.server_port}/hook", *flags,
           "train.py"]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str], workdir: Path, timeout: float = 90) -> str:
    out, _ = proc.communicate(timeout=timeout)
    run = rundir.current_run(workdir, require_alive=False)
    assert procs.job_processes(run.run_id) == [], "processes outlived the run"
    return out


def status(workdir: Path) -> dict:
    """`fi-dist status --json`, in this process (a fresh interpreter per poll is too slow
    on a crowded machine to catch a one-second phase)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(["status", "--json"])
    return json.loads(out.getvalue()) if code == 0 else {}


def test_forgotten_session_is_warned_checkpointed_and_ended(workdir, webhook):
    proc = start(workdir, FORGOTTEN, webhook, "--nnodes", "2")
    phases: set[str] = set()
    while proc.poll() is None:
        for row in status(workdir).get("ranks", []):
            phases.add(row.get("idle", ""))
        time.sleep(0.1)
    out = finish(proc, workdir)
    assert proc.returncode == IDLE_EXIT_CODE, out[-3000:]
    assert "root cause (first failure): node " in out and "ended by the idle culler" in out
    # fi-dist status showed the nodes' idle state while the job ran.
    assert {"idle", "warned"} & phases, phases
    # Warned, then ended, on every node; each rank got its checkpoint request.
    by_node = {n: [e["kind"] for e in webhook.events if e["node"] == n] for n in (0, 1)}
    assert by_node == {0: ["warn", "stop"], 1: ["warn", "stop"]}, webhook.events
    run = rundir.current_run(workdir, require_alive=False)
    for rank in (0, 1):
        assert (workdir / f"ckpt-rank{rank}").is_file(), out[-3000:]
        idle_since = float((workdir / f"idle-since-rank{rank}").read_text())
        ended_at = json.loads((run.path / "nodes" / f"{rank}.idle.json").read_text())["ended_at"]
        # Goal: within window + 2 sample periods (0.5 s more for a crowded 2-core CI box).
        assert TIMEOUT <= ended_at - idle_since <= TIMEOUT + 2 * INTERVAL + 0.5


def test_computing_job_is_never_ended(workdir, webhook):
    proc = start(workdir, COMPUTING, webhook, "--nproc-per-node", "2")
    out = finish(proc, workdir)
    assert proc.returncode == 0, out[-3000:]
    assert [e for e in webhook.events if e["kind"] in ("warn", "stop")] == []


def test_paused_job_with_an_active_client_is_not_ended(workdir, webhook):
    proc = start(workdir, PAUSED_ACTIVE, webhook)
    out = finish(proc, workdir)
    assert proc.returncode == 0, out[-3000:]
    assert [e for e in webhook.events if e["kind"] in ("warn", "stop")] == []
    run = rundir.current_run(workdir, require_alive=False)
    assert json.loads((run.path / "nodes" / "0.idle.json").read_text())["ended_at"] is None


def test_hung_rank_is_reported_as_hung(workdir, webhook):
    proc = start(workdir, HUNG, webhook, "--nproc-per-node", "2", "--idle-hang-factor", "3",
                 "--idle-timeout", "60")
    out = finish(proc, workdir)
    assert proc.returncode == 0, out[-3000:]
    hung = [e for e in webhook.events if e["kind"] == "hung"]
    assert hung and hung[0]["hung"] == [1], webhook.events
    assert "ranks [1] look hung" in out
