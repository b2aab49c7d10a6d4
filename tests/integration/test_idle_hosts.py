"""The one idle culler on each of its hosts, end to end, with the issue's cases.

* node agent (``fi-dist run``): ranks that meet at a barrier and sleep, with the DEFAULT
  10 s interval and a short window, are culled within the window + 2 (clamped) samples;
  a node whose peer never comes (stuck at rendezvous, no rank ever starts) is ended
  after the window with exit 75;
* the Flyte decorator (flytekit local execution of a ``PyTorch`` task): a session whose
  client keeps working is left alone past the window; once the client falls silent at
  a breakpoint (the forgotten paused session) the task is ended with a message;
* Ray (``--launcher ray``, a real local Ray): the idle node is culled, exit 75.

CPU sampler (no GPU here), windows of seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.contract import IDLE_EXIT_CODE, JobContract, LauncherKind
from fi_dist.k8s.operator import pod_env
from fi_dist.spec import IdleSpec
from tests.support.dap_client import JobClient

pytestmark = pytest.mark.timeout(300)

SLEEPER = """
import os, time
import torch.distributed as dist
dist.init_process_group("gloo")
dist.barrier()
open(f"idle-since-{dist.get_rank()}", "w").write(repr(time.time()))
time.sleep(120)
"""


def run_cli(cwd: Path, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fi_dist.cli", "run", "--plain",
                           "--master-port", "0", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_sleeper_with_the_default_interval_is_culled(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SLEEPER)
    window = 6.0
    r = run_cli(tmp_path, "--nnodes", "2", "--grace", "3", "--idle-timeout", str(window),
                "--idle-sampler", "cpu", "--idle-warn-lead", "1", "train.py")
    assert r.returncode == IDLE_EXIT_CODE, r.stdout[-3000:]
    sample = window / 3  # the default 10 s interval, clamped to a third of the window
    assert "interval 10s is more than a third of the 6s window; sampling every 2s" in r.stdout
    run = rundir.current_run(tmp_path, require_alive=False)
    for node in (0, 1):
        idle = json.loads(run.idle_file(node).read_text())
        slept = float((tmp_path / f"idle-since-{node}").read_text())
        ended = idle["ended_at"]
        # Within the window + 2 samples of falling asleep (+1 s: a crowded machine delays
        # the watcher's ticks).
        assert ended - slept <= window + 2 * sample + 1.0, (ended - slept, idle)
        assert idle["interval"] == sample
    assert "root cause (first failure): node " in r.stdout and "ended by the idle culler" in r.stdout
    assert procs.job_processes(run.run_id) == []


def test_a_node_stuck_at_rendezvous_is_ended_after_the_window(tmp_path: Path) -> None:
    """Node 0 of a 2-node job whose node 1 never comes: no rank ever starts."""
    (tmp_path / "train.py").write_text("print('never runs')\n")
    run = rundir.create_run(tmp_path)
    window = 3.0
    job = JobContract(LauncherKind.LOCAL, run_id=run.run_id, run_dir=str(run.path),
                      grace_period=2.0, idle=IdleSpec(enabled=True, timeout=window,
                                                      interval=0.5, sampler="cpu"))
    env = {**os.environ, **job.to_env(), **pod_env("127.0.0.2", free_port(), 2, 1, 0),
           ev.FI_DIST_NODE_ADDR: "127.0.0.2"}
    started = time.time()
    p = subprocess.run([sys.executable, "-m", "fi_dist.runtime.node_agent", "train.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    took = time.time() - started
    assert p.returncode == IDLE_EXIT_CODE, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads(run.node_file(0).read_text())
    assert result["error"].startswith("ended by the idle culler: idle since the start")
    idle = json.loads(run.idle_file(0).read_text())
    # Never active: the last activity is the watch's own start, a window before the end.
    assert idle["last_active"] > started
    assert window <= idle["ended_at"] - idle["last_active"] <= window + 2 * 0.5 + 0.5, idle
    assert took < window + 40, took  # the agent's start-up (torch) plus the window
    assert procs.job_processes(run.run_id) == []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TASK = '''
import os, sys, time
from flytekit import task
from flytekitplugins.kfpytorch import PyTorch
from fi_dist import interactive_pytorch


@task(task_config=PyTorch(num_workers=1))
@interactive_pytorch(port=0, debug_port=0, max_idle_seconds=WINDOW,
                     idle={"interval": 0.5, "sampler": "cpu", "warn_lead": 1})
def session() -> str:
    while not os.path.exists("go"):  # the test attaches first
        time.sleep(0.1)
    first = "a human works here"  # FIRST
    second = "and forgets the session here"  # SECOND
    return "finished"


if __name__ == "__main__":
    print(f"result: {session()}", flush=True)
'''


def test_decorator_keeps_an_active_session_and_ends_a_forgotten_one(tmp_path: Path) -> None:
    window = 4.0
    script = tmp_path / "task.py"
    script.write_text(TASK.replace("WINDOW", str(window)))
    env = {**os.environ, "FI_DIST_INTERACTIVE": "1", "PYTHONUNBUFFERED": "1",
           "FI_DIST_CODE_SERVER": str(tmp_path / "no-code-server")}
    log = tmp_path / "task.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    client = None
    try:
        launch = tmp_path / ".vscode" / "launch.json"
        deadline = time.monotonic() + 120
        while not launch.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        config = next(c for c in json.loads(launch.read_text())["configurations"]
                      if c["name"] == "fi-dist: attach all ranks")
        lines = {m: n for n, text in enumerate(TASK.splitlines(), 1)
                 for m in ("# FIRST", "# SECOND") if m in text}
        client = JobClient(config, breakpoints={str(script): sorted(lines.values())})
        client.attach(timeout=60)
        rank0 = client.wait_children(1, timeout=120)[0]
        (tmp_path / "go").touch()
        stop = rank0.wait_event("stopped", timeout=60)
        # A human at the breakpoint for two windows: inspecting, never idle.
        end = time.monotonic() + 2 * window
        while time.monotonic() < end:
            rank0.request("stackTrace", {"threadId": stop["body"]["threadId"]})
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]
        rank0.request("continue", {"threadId": stop["body"]["threadId"]})
        second = rank0.wait_event("stopped", timeout=60)
        forgotten_at = time.time()
        assert client.top_frame(0, second["body"]["threadId"])["line"] == lines["# SECOND"]
        proc.wait(90)  # the client stays attached and silent: the forgotten session
        ended = time.time()
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    out = log.read_text()
    assert proc.returncode != 0, out[-3000:]
    assert "result: finished" not in out
    assert "IdleCulledError" in out and "the idle culler ended this task on rank 0" in out
    assert f"whole {window:g}s window" in out
    # The pod's private run directory (no launcher made one): its culler's last sample.
    base = Path(tempfile.gettempdir()) / f"fi-dist-{os.getuid()}"
    # (Other runs' pod directories may lie beside it: only this task's pid counts.)
    pod = next(d for d in base.glob("task-*-node0")
               if (rundir.read_json(d / "ranks" / "0.json") or {}).get("pid") == proc.pid)
    assert rundir.read_json(pod / "ranks" / "0.json") is not None  # never torn
    idle = json.loads((pod / "nodes" / "0.idle.json").read_text())
    # Within the window + 2 samples of the last client action; the activity note it left
    # is throttled to one a second, so up to 1 s earlier.
    assert window - 1.5 <= idle["ended_at"] - forgotten_at <= window + 2 * 0.5 + 1.0, idle
    assert ended - forgotten_at < window + 30
    assert oct(pod.stat().st_mode & 0o777) == "0o700"
    shutil.rmtree(pod)


def test_ray_idle_node_is_culled(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(
        "import os, time\nopen('idle-since', 'w').write(repr(time.time()))\ntime.sleep(120)\n")
    env_before = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "fi_dist.cli", "run", "--plain", "--launcher",
                        "ray", "--grace", "3", "--idle-timeout", "3", "--idle-interval", "0.5",
                        "--idle-sampler", "cpu", "--idle-warn-lead", "1", "train.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=240,
                       env={k: v for k, v in env_before.items() if k != "RAY_ADDRESS"})
    out = r.stdout + r.stderr
    assert r.returncode == IDLE_EXIT_CODE, out[-4000:]
    assert "rank 0 (node 0): exit 75: ended by the idle culler: idle for" in out, out[-3000:]
    run = rundir.current_run(tmp_path, require_alive=False)
    idle = json.loads(run.idle_file(0).read_text())
    slept = float((tmp_path / "idle-since").read_text())
    assert 3.0 - 1.0 <= idle["ended_at"] - slept <= 3.0 + 2 * 0.5 + 1.0, idle
