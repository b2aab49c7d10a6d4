"""Another user on the same machine (uid 65534, through ``setpriv``) against a job.

* the job's rendezvous store (a real torch TCPStore on loopback, as torchelastic runs
  it) is open to anyone: a forged resume generation written into it is refused by the
  watcher with a log line and nothing written; rank 0's signed one is applied; the
  attacker's replay of it under the next number is refused;
* after a real ``fi-dist run --debug --nnodes 1 --nproc-per-node 2`` of a script with an
  ``@interactive_pytorch`` session, in a directory the attacker may list: no file
  fi-dist wrote that holds the token or a password (run directory, debug.json,
  launch.json, session file, code-server password) can be read, nor its directory
  listed (EACCES); ``.fi-dist/.gitignore`` keeps it all out of git.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from fi_dist.runtime import generation, resume
from tests.support.cli import fi_dist_cmd

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                                 reason="needs root and setpriv to act as another uid")]

ATTACKER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
TOKEN = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"


def as_attacker(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in this venv's Python as uid/gid 65534 with no supplementary groups."""
    return subprocess.run([*ATTACKER, sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent"},
                          cwd="/")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may traverse and list (mode 0755 up to /), unlike pytest's
    own tmp_path (under a 0700 directory): what the attacker cannot read then is down to
    the modes fi-dist gives its own files."""
    path = Path(tempfile.mkdtemp(prefix="fi-dist-sec-", dir="/tmp"))
    path.chmod(0o755)
    for parent in path.parents:
        assert parent.stat().st_mode & 0o005 == 0o005, f"{parent} is not traversable"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_forged_and_replayed_generations_from_another_user_are_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=60))
    scope = generation.Scope("job-1", 0, 0)
    root = tmp_path / "node1"
    root.mkdir()
    (root / "train.py").write_text("safe = True\n")
    watcher = resume.Watcher(store, root, TOKEN, scope, lambda g, w: None, label="rank 3")
    forge = as_attacker(f"""
        import json, base64
        from datetime import timedelta
        import torch.distributed as dist
        s = dist.TCPStore("127.0.0.1", {store.port}, is_master=False, wait_for_workers=False,
                          timeout=timedelta(seconds=30))
        # the old unsigned format, and a "signed" one with a guessed token
        s.set("{generation.PAYLOAD_KEY.format(1)}",
              json.dumps({{"train.py": base64.b64encode(b"import os; os.system('id')").decode()}}))
        s.add("{generation.GEN_KEY}", 1)
        print("FORGED", flush=True)
    """)
    assert forge.returncode == 0 and "FORGED" in forge.stdout, forge.stderr[-2000:]
    with caplog.at_level(logging.ERROR, "fi_dist.resume"):
        assert watcher.poll() is None
    assert (root / "train.py").read_text() == "safe = True\n"
    assert "rank 3: resume generation 1 REFUSED, nothing written: not a signed generation" \
        in caplog.text

    assert generation.publish(store, TOKEN, scope, {"train.py": b"fixed = True\n"}) == 2
    assert watcher.poll() == (2, ["train.py"])
    (root / "train.py").write_text("edited since\n")

    replay = as_attacker(f"""
        from datetime import timedelta
        import torch.distributed as dist
        s = dist.TCPStore("127.0.0.1", {store.port}, is_master=False, wait_for_workers=False,
                          timeout=timedelta(seconds=30))
        s.set("{generation.PAYLOAD_KEY.format(3)}", s.get("{generation.PAYLOAD_KEY.format(2)}"))
        s.add("{generation.GEN_KEY}", 1)
        print("REPLAYED", flush=True)
    """)
    assert replay.returncode == 0 and "REPLAYED" in replay.stdout, replay.stderr[-2000:]
    assert watcher.poll() is None
    assert (root / "train.py").read_text() == "edited since\n"
    assert "generation 3 REFUSED" in caplog.text and "an old generation replayed" in caplog.text


JOB = '''\
import torch.distributed as dist
from fi_dist import interactive_pytorch


# A code-server that exits at once: the session still writes its password and session file.
@interactive_pytorch(enable=True, port=0, debug_port=0, code_server="/bin/false")
def train() -> None:
    dist.init_process_group("gloo")
    dist.barrier()
    print(f"rank {dist.get_rank()} done", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    train()
'''


def test_another_user_reads_nothing_fi_dist_wrote(open_dir: Path) -> None:
    (open_dir / "job.py").write_text(JOB)
    (open_dir / "control.txt").write_text("readable by all\n")
    (open_dir / "control.txt").chmod(0o644)
    out = subprocess.run(fi_dist_cmd("run", "--plain", "--debug", "--debug-port", "0",
                                     "--master-port", "0", "--nnodes", "1",
                                     "--nproc-per-node", "2", "job.py"),
                         cwd=open_dir, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert "rank 0 done" in out.stdout and "rank 1 done" in out.stdout

    fd = open_dir / ".fi-dist"
    run = fd / "runs" / (fd / "current").read_text().strip()
    assert (fd / ".gitignore").read_text().splitlines()[-1] == "*"
    files = [run / "debug.json", open_dir / ".vscode" / "launch.json",
             open_dir / resume.SESSION_FILE, fd / "code-server" / "password"]
    dirs = [fd, fd / "runs", run, open_dir / ".vscode", fd / "code-server"]
    for path in files:
        assert path.is_file(), path
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in dirs:
        assert path.stat().st_mode & 0o777 == 0o700, path
    session = json.loads((open_dir / resume.SESSION_FILE).read_text())
    assert session["token"] and session["token"] in (run / "debug.json").read_text()

    probe = as_attacker(f"""
        import errno, json, os
        out = {{}}
        for p in {[str(p) for p in files]!r}:
            try:
                open(p).read(); out[p] = "READ"
            except OSError as e:
                out[p] = errno.errorcode.get(e.errno, str(e.errno))
        for p in {[str(p) for p in dirs]!r}:
            try:
                os.listdir(p); out[p] = "LISTED"
            except OSError as e:
                out[p] = errno.errorcode.get(e.errno, str(e.errno))
        out["control"] = open({str(open_dir / "control.txt")!r}).read().strip()
        out["top"] = sorted(os.listdir({str(open_dir)!r}))
        print(json.dumps(out))
    """)
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen = json.loads(probe.stdout)
    # The attacker does reach the directory (so what follows is down to fi-dist's modes).
    assert seen.pop("control") == "readable by all"
    assert {".fi-dist", ".vscode", "job.py"} <= set(seen.pop("top"))
    assert seen == {str(p): "EACCES" for p in [*files, *dirs]}, seen
