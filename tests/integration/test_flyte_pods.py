"""A 2-pod x 1-rank Flyte ``PyTorch(num_workers=1)`` task, each pod running flytekit's
own task entrypoint (``pyflyte-execute``) with exactly the PyTorchJob pod env.

``fi-dist run --pod-entrypoint --no-python pyflyte-execute ...`` is what flytepropeller
and the training operator would run in the Master and the Worker pod (no torchrun); the
command and ``inputs.pb`` come from flytekit's serialization
(``python -m fi_dist.integrations.flyte_pods``).

* off: the checksum of an undecorated run;
* on: attach through the hub reaches both pods' ranks; a breakpoint on pod 1's rank
  stops both (pod 0's by the hub's pause); continue; then pod 1's rank raises, waits
  post-mortem, a resume with the fixed file through rank 0's endpoint (pod 0) restarts
  both pods (exit 198, ``--max-restarts``), the restarted ranks resume from the last
  checkpoint and the task's output is the clean checksum.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fi_dist import procs, rundir
from fi_dist.runtime import resume
from tests.support.dap_client import JobClient

pytestmark = pytest.mark.timeout(420)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "flyte_pytorch.py"
STEPS = 6
TOKEN = "5e" * 16

BUG = '''import os, time


def check(step: int, rank: int) -> None:
    if step == 0:
        while not os.path.exists("go"):  # the test attaches first
            time.sleep(0.1)
    if step == 1:
        if rank == 1:
            here = "pod 1 stops here"  # BREAK
        else:
            time.sleep(3.0)  # pod 0 is in Python when the hub pauses it
    if rank == 1 and step == 3:
        raise ValueError("deliberate bug on rank 1 at step 3")
'''
FIXED = '''def check(step: int, rank: int) -> None:
    return None
'''
HOOK = "        x, y = make_batch(step, rank)\n"


def entrypoint_bin(folder: Path) -> Path:
    """A ``pyflyte-execute`` on PATH for this interpreter: the console script pip writes
    (``from flytekit.bin.entrypoint import execute_task_cmd``), whatever venv made ours."""
    folder.mkdir(exist_ok=True)
    script = folder / "pyflyte-execute"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      "from flytekit.bin.entrypoint import execute_task_cmd\n"
                      "sys.exit(execute_task_cmd())\n")
    script.chmod(0o755)
    return folder


def project(folder: Path, buggy: str) -> None:
    text = EXAMPLE.read_text()
    assert HOOK in text
    (folder / "flyte_pytorch.py").write_text(
        text.replace(HOOK, HOOK + "        __import__('buggy').check(step, rank)\n"))
    (folder / "buggy.py").write_text(buggy)


class Pods:
    """``fi-dist run --pod-entrypoint --nnodes 2`` of the task in ``folder``."""

    def __init__(self, folder: Path, interactive: str, *inputs: str, max_restarts: int = 0
                 ) -> None:
        self.folder = folder
        self.exec_dir = folder.parent / f"{folder.name}-exec"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "FI_DIST_INTERACTIVE": interactive,
               "FI_DIST_DEBUG_TOKEN": TOKEN,
               "PATH": f"{entrypoint_bin(folder.parent / 'bin')}:{os.environ['PATH']}"}
        prep = subprocess.run(
            [sys.executable, "-m", "fi_dist.integrations.flyte_pods", "flyte_pytorch.py",
             "train", "--dir", str(self.exec_dir), f"steps={STEPS}", *inputs],
            cwd=folder, env=env, capture_output=True, text=True, timeout=120)
        assert prep.returncode == 0, prep.stderr[-3000:]
        self.command = shlex.split(prep.stdout.strip().splitlines()[-1])
        assert self.command[0] == "pyflyte-execute" and "--resolver" in self.command
        self.log = folder.parent / f"{folder.name}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fi_dist.cli", "run", "--plain", "--pod-entrypoint",
             "--nnodes", "2", "--master-port", "0", "--max-restarts", str(max_restarts),
             "--grace", "5", "--no-python", *self.command],
            cwd=folder, env=env, stdout=self._out, stderr=subprocess.STDOUT,
            start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
            self._out.close()
        run = rundir.current_run(self.folder, require_alive=False)
        assert procs.job_processes(run.run_id) == [], "processes outlived the run"
        return self.proc.returncode

    def checksum(self) -> str:
        from fi_dist.integrations.flyte_pods import read_outputs

        result = read_outputs(self.exec_dir)
        assert "outputs" in result, result
        return str(result["outputs"]["o0"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The decorator OFF: the checksum of an undecorated run of the same task."""
    folder = tmp_path_factory.mktemp("off")
    project(folder, FIXED)
    pods = Pods(folder, "0")
    assert pods.wait(240) == 0, pods.output()[-3000:]
    assert not (folder / resume.SESSION_FILE).exists()
    return pods.checksum()


def _line(text: str, marker: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


def _status(session: dict) -> dict:
    import urllib.request

    req = urllib.request.Request(session["resume_url"] + "/status",
                                 headers={"Authorization": f"Bearer {session['token']}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_two_pods_break_all_post_mortem_and_resume(tmp_path: Path, reference: str) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    project(folder, BUG)
    ckpt = tmp_path / "ckpt"
    pods = Pods(folder, "1", f"ckpt_dir={ckpt}", max_restarts=1)
    session_path = folder / resume.SESSION_FILE
    client = None
    try:
        assert resume.wait_until(session_path.exists, 180), pods.output()[-3000:]
        session = json.loads(session_path.read_text())
        assert session["token"] == TOKEN  # every pod took it from FI_DIST_DEBUG_TOKEN
        launch = json.loads((folder / ".vscode" / "launch.json").read_text())
        config = next(c for c in launch["configurations"]
                      if c["name"] == "fi-dist: attach all ranks")
        client = JobClient(config, breakpoints={
            str(folder / "buggy.py"): [_line(BUG, "# BREAK")]})
        client.attach(timeout=60)
        children = client.wait_children(2, timeout=120)
        assert {r: client.child_names[r] for r in children} == {
            0: "rank 0 (node 0)", 1: "rank 1 (node 1)"}
        (folder / "go").touch()
        stops = {r: c.wait_event("stopped", timeout=120) for r, c in children.items()}
        assert stops[1]["body"]["reason"] == "breakpoint"
        assert stops[0]["body"]["reason"] == "pause"  # stopped by the hub: break-all
        frame = client.top_frame(1, stops[1]["body"]["threadId"])
        assert frame["line"] == _line(BUG, "# BREAK")
        assert client.evaluate(1, "step", frame["id"]) == "1"
        children[1].request("continue", {"threadId": stops[1]["body"]["threadId"]})
        assert children[0].wait_event("continued", timeout=60)  # continue on one: all
        client.close()
        client = None
        # Pod 1's rank raises at step 3 and waits post-mortem; pod 0's waits in a collective.
        assert resume.wait_until(lambda: _status(session)["failed"] == "1", 180), \
            pods.output()[-3000:]
        assert pods.proc.poll() is None
        answer = resume.request_resume(session, files={"buggy.py": FIXED})
        assert answer["files"] == ["buggy.py"]
    finally:
        if client is not None:
            client.close()
        code = pods.wait(300)
    out = pods.output()
    assert code == 0, out[-4000:]
    assert "deliberate bug on rank 1 at step 3" in out
    assert "resume generation 1" in out and "restarting the job (attempt 1" in out
    assert pods.checksum() == reference
    assert (folder / "buggy.py").read_text() == FIXED
    # The restarted pods resumed from the checkpoint of step 3: steps 0-2 ran once.
    assert out.count("[node0] [rank 0] step 0 loss") == 1, out[-4000:]
    assert "[node1] [rank 1] step 5 loss" in out
