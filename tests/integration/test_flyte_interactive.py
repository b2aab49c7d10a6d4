"""@interactive_pytorch under flytekit local execution of an Elastic task (2 real ranks).

* off: the same checksum as on, and no debugpy, hub or code-server process ever appears;
* on, resume with edited code: one hub and one code-server for the job although both
  ranks run the decorator, launch.json with both configurations; rank 1 fails, waits
  post-mortem, the file is fixed through the API, every rank restarts with it from the
  last checkpoint, the task returns the checksum of the clean (off) run, and no process
  of the job is left.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from fi_dist.runtime import codeserver, resume
from tests.support.dap_client import JobClient

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "flyte_workflow.py"
STEPS = "6"
CHECKSUM = re.compile(r"^(?:final checksum: )?([0-9a-f]{16})$", re.M)  # python / pyflyte run


def _marked(mark: str) -> dict[int, str]:
    """Every live process whose environment carries ``mark``: pid -> command line.

    By environment, not by parent: debugpy daemonizes its adapters (their parent becomes
    init), so counting the job's descendants saw an adapter only while it was starting.
    """
    needle = f"FI_DIST_TEST_MARK={mark}".encode()
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes():
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(
                    b"\0", b" ").decode()
        except OSError:
            continue
    return out


def _kinds(procs: dict[int, str]) -> dict[str, set[int]]:
    """The pids of debug hubs, debugpy processes and top-level code-servers among ``procs``."""
    out: dict[str, set[int]] = {"hub": set(), "debugpy": set(), "code-server": set()}
    for pid, cmd in procs.items():
        if "fi_dist.runtime.debug.hub" in cmd:
            out["hub"].add(pid)
        elif "debugpy" in cmd:
            out["debugpy"].add(pid)
        # code-server's node processes fork more of themselves: count the top ones. Its
        # short `--install-extension` run (the fi-dist extension, before it starts) is no
        # server.
        elif ("code-server" in cmd and "--install-extension" not in cmd
              and not any("code-server" in procs.get(pp, "") for pp in _parent_of(pid))):
            out["code-server"].add(pid)
    return out


def _parent_of(pid: int) -> list[int]:
    try:
        return [int((Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[1])]
    except OSError:
        return []


class Job:
    """The copied example run as `python flyte_workflow.py` with its processes sampled."""

    def __init__(self, folder: Path, interactive: str, ckpt: Path | None = None,
                 cmd: list[str] | None = None) -> None:
        self.mark = uuid.uuid4().hex
        env = {**os.environ, "FI_DIST_INTERACTIVE": interactive, "PYTHONUNBUFFERED": "1",
               "FI_DIST_TEST_MARK": self.mark}
        args = cmd or [sys.executable, "flyte_workflow.py", "--steps", STEPS]
        if ckpt is not None:
            args += ["--ckpt-dir", str(ckpt)]
        self.log = folder / f"job-{interactive}.log"
        self._out = open(self.log, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(args, cwd=folder, env=env, stdout=self._out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict[str, set[int]] = {"hub": set(), "debugpy": set(), "code-server": set()}
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2) and self.proc.poll() is None:
            for k, pids in _kinds(_marked(self.mark)).items():
                self.seen[k] |= pids

    @property
    def peak(self) -> dict[str, int]:
        """How many distinct processes of each kind the job ever ran."""
        return {k: len(v) for k, v in self.seen.items()}

    def leftovers(self) -> list[str]:
        """Processes of this job still alive (by the mark in their environment)."""
        return list(_marked(self.mark).values())

    def wait(self, timeout: float) -> str:
        try:
            self.proc.wait(timeout)
        finally:
            self._stop.set()
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
            self._out.close()
        return self.log.read_text()


def _checksum(output: str) -> str:
    found = CHECKSUM.findall(output)
    assert found, f"no checksum in the job's output:\n{output[-3000:]}"
    return found[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, int]]:
    """The decorator OFF, through `pyflyte run`: checksum of a clean run, debug processes."""
    folder = tmp_path_factory.mktemp("off")
    shutil.copy(EXAMPLE, folder / "flyte_workflow.py")
    pyflyte = str(Path(sys.executable).parent / "pyflyte")
    job = Job(folder, "0", cmd=[pyflyte, "run", "flyte_workflow.py", "wf", "--steps", STEPS])
    out = job.wait(240)
    assert job.proc.returncode == 0, out[-3000:]
    assert not (folder / resume.SESSION_FILE).exists()
    return _checksum(out), job.peak


@pytest.mark.timeout(300)
def test_off_runs_unchanged_without_debug_processes(reference: tuple[str, dict[str, int]]) -> None:
    _, peak = reference  # the checksum is compared with the interactive run's below
    assert peak == {"hub": 0, "debugpy": 0, "code-server": 0}


BUG = '''def check(step: int, rank: int) -> None:
    if rank == 1 and step == 3:
        raise ValueError("deliberate bug on rank 1 at step 3")
'''
FIXED = '''def check(step: int, rank: int) -> None:
    return None
'''


def _status(session: dict) -> dict:
    req = urllib.request.Request(session["resume_url"] + "/status",
                                 headers={"Authorization": f"Bearer {session['token']}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(600)
def test_resume_with_edited_code_completes_with_the_clean_checksum(
        tmp_path: Path, reference: tuple[str, dict[str, int]]) -> None:
    text = EXAMPLE.read_text()
    hook = "        x, y = make_batch(step, rank)\n"
    assert hook in text
    (tmp_path / "flyte_workflow.py").write_text(
        text.replace(hook, hook + "        __import__('buggy').check(step, rank)\n"))
    (tmp_path / "buggy.py").write_text(BUG)
    job = Job(tmp_path, "1", ckpt=tmp_path.parent / f"{tmp_path.name}-ckpt")
    session_path = tmp_path / resume.SESSION_FILE
    try:
        assert resume.wait_until(session_path.exists, 180), job.log.read_text()[-3000:]
        session = json.loads(session_path.read_text())
        # The wrong token is refused.
        with pytest.raises(resume.ResumeError, match="401"):
            resume.request_resume({**session, "token": "wrong"})
        assert resume.wait_until(lambda: _status(session)["failed"] == "1", 180), \
            job.log.read_text()[-3000:]
        assert job.proc.poll() is None  # post-mortem: the job waits instead of failing
        # One hub; the ranks' debuggers run in-process (no debugpy adapter process, nothing
        # listens in a rank), and both are reached through the hub.
        assert job.peak["hub"] == 1 and job.peak["debugpy"] == 0, job.peak
        launch = json.loads((tmp_path / ".vscode" / "launch.json").read_text())
        config = next(c for c in launch["configurations"]
                      if c["name"] == "fi-dist: attach all ranks")
        client = JobClient(config)
        client.attach(timeout=60)
        assert sorted(client.wait_children(2, timeout=60)) == [0, 1]
        client.close()
        if codeserver.find() is not None:
            assert job.peak["code-server"] == 1, job.peak
            assert urllib.request.urlopen(session["code_server_url"] + "healthz", timeout=5).status == 200
        # A path leaving the source root is refused.
        with pytest.raises(resume.ResumeError, match="leaves the source root"):
            resume.request_resume(session, files={"../evil.py": "x = 1\n"})
        answer = resume.request_resume(session, files={"buggy.py": FIXED})
        assert answer["files"] == ["buggy.py"]
    finally:
        out = job.wait(240)
    assert job.proc.returncode == 0, out[-4000:]
    assert "deliberate bug on rank 1 at step 3" in out
    assert "resume generation 1" in out
    assert _checksum(out) == reference[0]
    assert (tmp_path / "buggy.py").read_text() == FIXED
    # One hub and one code-server for the job although both ranks run the decorator, in
    # each of the two attempts; no debugpy adapter process at any time.
    assert job.peak["hub"] == 2, job.peak
    assert job.peak["debugpy"] == 0, job.peak
    if codeserver.find() is not None:
        assert job.peak["code-server"] == 2, job.peak
    launch = json.loads((tmp_path / ".vscode" / "launch.json").read_text())
    names = {c["name"] for c in launch["configurations"]}
    assert {"fi-dist: attach all ranks", "fi-dist: resume all ranks"} <= names
    session = json.loads((tmp_path / resume.SESSION_FILE).read_text())
    assert session["source_root"] == str(tmp_path) and session["restart_count"] == 1
    assert oct((tmp_path / resume.SESSION_FILE).stat().st_mode & 0o777) == "0o600"
    assert resume.wait_until(lambda: not job.leftovers(), 20), job.leftovers()
    assert not (tmp_path.parent / "evil.py").exists()
    # Resumed from the checkpoint of step 3: the first attempt's steps were not rerun.
    assert re.search(r"\[rank 0\] step 3 loss", out)
    assert len(re.findall(r"\[rank 0\] step 0 loss", out)) == 1, out[-4000:]
