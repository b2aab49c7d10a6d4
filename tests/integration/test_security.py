"""The debug ports as an attacker meets them: another user, no token, floods and fakes.

The attacker is uid 65534 (``setpriv``) for everything a second user of the node can
try. A control test first shows the attacker script gets code execution through a plain
``debugpy.listen()`` port, so its failing against a fi-dist job means something.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from fi_dist import procs
from fi_dist.runtime.debug import handshake
from fi_dist.runtime.debug.protocol import SyncChannel, line
from tests.support.dap_client import DapSession, JobClient
from tests.support.debug_job import marker_line

pytestmark = pytest.mark.timeout(400)

HERE = Path(__file__).resolve().parent
ATTACKER = HERE / "scripts" / "dap_attacker.py"
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def attack(marker: Path, targets: list[str]) -> dict:
    out = subprocess.run([*AS_NOBODY, sys.executable, str(ATTACKER), str(marker), *targets],
                         capture_output=True, text=True, timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def listening(pids: set[int]) -> list[str]:
    """HOST:PORT of every TCP listener owned by one of ``pids``."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for row in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", row)}
        if owners & pids:
            host, _, port = row.split()[3].rpartition(":")
            host = host.strip("[]")
            found.append(f"{'127.0.0.1' if host in ('0.0.0.0', '*', '::') else host}:{port}")
    return sorted(set(found))


def test_control_the_attacker_gets_in_through_an_open_debugpy_port(tmp_path: Path) -> None:
    """What fi-dist had before: debugpy.listen() on loopback serves anyone."""
    script = tmp_path / "open.py"
    script.write_text("import debugpy, time\n"
                      "print(debugpy.listen(('127.0.0.1', 0))[1], flush=True)\n"
                      "while True: time.sleep(0.01)\n")
    victim = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"})
    marker = Path(f"/tmp/fi-dist-pwned-{uuid.uuid4().hex}")
    try:
        assert victim.stdout is not None
        port = int(victim.stdout.readline())
        attack(marker, [f"127.0.0.1:{port}"])
        assert marker.exists(), "the attacker script failed against an open debugpy port"
    finally:
        victim.kill()
        victim.wait()
        marker.unlink(missing_ok=True)


def test_no_port_of_a_debug_job_runs_code_for_another_user(tmp_path: Path, debug_job) -> None:
    release = tmp_path / "release"
    job = debug_job(2, 2, {"JOB_MODE": "loop", "JOB_RELEASE": str(release)})
    marker = Path(f"/tmp/fi-dist-pwned-{uuid.uuid4().hex}")
    try:
        job.wait_states(lambda s: len(s) == 4 and all(v == "running" for v in s.values()),
                        timeout=120)
        run_id = job.run_dir().name
        ports = listening(set(procs.job_processes(run_id)))
        debug = json.loads((job.run_dir() / "debug.json").read_text())
        hub_ide = f"127.0.0.1:{job.config['connect']['port']}"
        assert hub_ide in ports and f"127.0.0.2:{debug['rank_port']}" in ports, ports
        report = attack(marker, ports)
        assert not marker.exists(), f"code ran for another user: {report}"
        ide = report[hub_ide]["no_token"]
        assert "refused" in str(ide["attach"].get("message")), ide
        assert job.proc.poll() is None, job.output()[-3000:]
        # The owner still reaches every rank through the hub: each answers, and the
        # breakpoint in the loop stops the job (the first rank there stops, the others
        # wait for it inside the loop's all_reduce).
        client = JobClient(job.config, breakpoints={str(job.script): [
            marker_line(job.script, "LOOP-LINE")]})
        client.attach()
        children = client.wait_children(4, timeout=90)
        for child in children.values():
            assert child.request("threads", None, 60)["body"]["threads"]
        job.wait_states(lambda s: any(str(v).startswith("paused at") for v in s.values()),
                        timeout=90)
        release.write_text("go")
        client.close()
        assert job.wait(180) == 0, job.output()[-3000:]
        assert "final checksum" in job.output()
    finally:
        marker.unlink(missing_ok=True)


class FakeHub:
    """Listens where a rank expects its hub and records what the rank tells it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: list[bytes] = []
        self.hellos: list[tuple[str, dict]] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                chan = SyncChannel(conn)
                nonce = handshake.new_nonce()
                try:
                    conn.sendall(line({"challenge": nonce}))
                    hello = chan.read_line()
                    self.seen.append(json.dumps(hello).encode())
                    self.hellos.append((nonce, hello or {}))
                    # Pretend to accept, then ask for a debug session.
                    conn.sendall(line({"ok": True, "mac": "0" * 64}))
                    conn.sendall(line({"cmd": "open", "sid": 1}))
                    self.seen.append(conn.recv(65536))
                except OSError:
                    pass


def test_a_fake_hub_learns_nothing_it_can_replay(standalone_hub) -> None:
    fake = FakeHub()
    real = standalone_hub()
    try:
        real.start_ranks(1, rank_port=fake.port)  # the rank dials the fake
        deadline = time.monotonic() + 60
        while len(fake.hellos) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(fake.hellos) >= 2, "the rank never dialled the fake hub"
        everything = b"".join(fake.seen)
        assert real.token.encode() not in everything  # the token never crosses the wire
        # The rank did not take the fake for its hub: no debug session was opened, and it
        # keeps trying (each try is a fresh hello).
        assert all(h.get("kind") == "control" for _, h in fake.hellos)
        # Replaying a captured hello to the real hub gets nowhere: its challenge is new.
        _, captured = fake.hellos[0]
        with socket.create_connection(("127.0.0.1", real.rank_port), timeout=10) as s:
            chan = SyncChannel(s)
            assert "challenge" in (chan.read_line() or {})
            chan.send_line(captured)
            assert chan.read_line() == {"ok": False, "error": "no proof of the job token"}
    finally:
        fake.sock.close()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def test_a_flood_before_authentication_stays_bounded(standalone_hub) -> None:
    """Large bodies, half-sent headers and more connections than the hub has descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    hub = standalone_hub(wrap=["prlimit", "--nofile=1024:1024"])
    held: list[socket.socket] = []
    try:
        hub.start_ranks(1)
        base_rss = rss_kib(hub.proc.pid)
        lines_before = len(hub.lines)
        started = time.monotonic()
        # 40 connections announcing a 16 MiB - 1 body and sending 1 MiB of it.
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", hub.ide_port))
            with_body = b"Content-Length: 16777215\r\n\r\n" + b"x" * (1 << 20)
            with contextlib.suppress(OSError):
                s.sendall(with_body)
            held.append(s)
        # 500 half-sent headers, and then enough connections to pass the fd limit.
        partial = []
        for _ in range(1100):
            try:
                s = socket.create_connection(("127.0.0.1", hub.ide_port), timeout=5)
                s.sendall(b"Content-Len")
            except OSError:
                continue
            partial.append(s)
        held += partial
        assert rss_kib(hub.proc.pid) - base_rss < 64 * 1024
        # A legitimate attach goes through during the flood.
        t0 = time.monotonic()
        session = DapSession("127.0.0.1", hub.ide_port, "owner")
        session.request("initialize", {"adapterID": "debugpy"}, 10)
        attach = session.send_request("attach", hub.config)
        session.wait_event("initialized", 10)
        took = time.monotonic() - t0
        session.request("configurationDone", None, 10)
        session.wait_response(attach, 10)
        session.close()
        assert took < 2.0, f"attach took {took:.1f}s during the flood"
        # Half-sent headers are closed at the authentication deadline.
        time.sleep(11)
        still_open = 0
        for s in partial[:500]:
            s.settimeout(0.01)
            try:
                if s.recv(1) != b"":
                    still_open += 1
            except TimeoutError:
                still_open += 1
            except OSError:
                pass
        assert still_open == 0, f"{still_open} half-sent connections outlived the deadline"
        assert hub.alive()
        elapsed = time.monotonic() - started
        new_lines = len(hub.lines) - lines_before
        assert new_lines <= 3 * elapsed + 5, "".join(hub.lines[lines_before:])[-3000:]
    finally:
        for s in held:
            s.close()
