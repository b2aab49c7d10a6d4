"""The debug hub end to end: real ``fi-dist run --debug`` jobs, a real DAP client, one port.

Each test starts a real job (node agents, torchrun semantics, gloo ranks, debugpy in
every rank, the hub beside rank 0) and drives it through the hub's one IDE port with
the configuration the hub wrote to ``.vscode/launch.json``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fi_dist.runtime.debug import handshake
from fi_dist.runtime.debug.protocol import SyncChannel, encode
from tests.support.dap_client import DapError, DapSession, JobClient
from tests.support.debug_job import DebugJob, checksum, cli, marker_line, write_job

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The checksum of the same job on 2x2 without --debug."""
    work = tmp_path_factory.mktemp("baseline")
    script = write_job(work)
    out = subprocess.run(cli("run", "--plain", "--nnodes", "2", "--nproc-per-node", "2",
                             "--master-port", "0", str(script)),
                         cwd=work, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    return checksum(out.stdout)


def _refused_attach(config: dict) -> str:
    """Attach without the token: the hub answers with an error and closes."""
    host, port = config["connect"]["host"], config["connect"]["port"]
    s = DapSession(host, port, "no-token")
    try:
        s.request("initialize", {"adapterID": "debugpy"})
        bad = {k: v for k, v in config.items() if k != "fiDistToken"}
        resp = s.request("attach", bad, check=False)
        assert not resp["success"]
        assert s.closed.wait(10), "the hub kept an unauthenticated connection open"
        return resp["message"]
    finally:
        s.close()


def _fuzz_ide_port(config: dict) -> None:
    host, port = config["connect"]["host"], config["connect"]["port"]
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                   # not DAP at all
        b"Content-Length: 99999999999\r\n\r\n{}",               # huge Content-Length
        b"Content-Length: 5\r\n\r\n{{{{{",                      # bad JSON
        b"Content-Length: 2\r\n\r\n[]",                         # not an object
        encode({"seq": 1, "type": "request", "command": "frobnicate"}),  # unknown command
        b"X" * 5000,                                            # endless header
    ]
    for blob in garbage:
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(blob)
            s.settimeout(10)
            try:
                while s.recv(65536):
                    pass
            except TimeoutError:
                pass  # the unknown command gets an error response and the socket stays up


def _fuzz_rank_port(job: DebugJob) -> None:
    debug = json.loads((job.run_dir() / "debug.json").read_text())
    addr = ("127.0.0.2", debug["rank_port"])
    token = job.config["fiDistToken"]
    for hello_token, fields in (("wrong", {"kind": "control", "rank": 0}),
                                (None, None),
                                (token, {"kind": "data", "rank": 0, "sid": 424242})):
        with socket.create_connection(addr, timeout=10) as s:
            chan = SyncChannel(s)
            ask = chan.read_line()
            assert ask is not None and "challenge" in ask
            if fields is None:
                s.sendall(b"\x00\xff" * 100 + b"\n")
                s.settimeout(10)
                assert s.recv(65536) == b""
                continue
            hello = handshake.rank_hello(hello_token or "", ask["challenge"], **fields)
            chan.send_line(hello)
            reply = chan.read_line()
            if hello_token == token:  # proven, but no session asked for this stream: closed
                assert handshake.check_hub(token, ask["challenge"], hello, reply)
                assert chan.read_line() is None
            else:
                assert reply == {"ok": False, "error": "no proof of the job token"}


def _ends_like_baseline(job: DebugJob, baseline: str) -> None:
    """The job exits 0 with the checksum of the same run without --debug."""
    assert job.wait(240) == 0, job.output()[-3000:]
    assert checksum(job.output()) == baseline


def test_break_on_all_ranks_2x2(tmp_path: Path, debug_job, baseline: str) -> None:
    job = debug_job(2, 2, {"JOB_MODE": "break", "JOB_HOLD": "25"},
                   extra=("--wait-for-client",))
    client = None
    try:
        cfg = job.config
        assert cfg["type"] == "fi-dist" and cfg["request"] == "attach"
        assert cfg["justMyCode"] is False and cfg["connect"]["host"] == "127.0.0.1"
        printed = subprocess.run(cli("attach", "--print"), cwd=tmp_path, capture_output=True,
                                 text=True, timeout=60)
        assert json.loads(printed.stdout) == cfg

        # Security and robustness before the real client: all refused, hub and ranks live on.
        assert "fiDistToken" in _refused_attach(cfg)
        _fuzz_ide_port(cfg)
        _fuzz_rank_port(job)

        line = marker_line(job.script, "LAST-RANK-LINE")
        client = JobClient(cfg, breakpoints={str(job.script): [line]})
        client.attach()
        children = client.wait_children(4, timeout=120)
        assert {r: client.child_names[r] for r in children} == {
            0: "rank 0 (node 0)", 1: "rank 1 (node 0)", 2: "rank 2 (node 1)",
            3: "rank 3 (node 1)"}
        stops = {r: s.wait_event("stopped", timeout=120) for r, s in children.items()}
        assert stops[3]["body"]["reason"] == "breakpoint"
        assert all(stops[r]["body"]["reason"] == "pause" for r in (0, 1, 2))
        spin_line = marker_line(job.script, "OTHERS-SPIN-LINE")
        for r in range(4):
            frame = client.top_frame(r, stops[r]["body"]["threadId"])
            if r == 3:
                assert frame["line"] == line
                assert client.evaluate(r, "dist.get_rank()", frame["id"]) == "3"
            else:
                # Paused while running Python: mostly in spin(), but the pause (a few ms
                # after rank 3's stop) may land while a rank is still leaving step 2's
                # all_reduce (torch's Python wrapper) or in main() on its way to spin().
                path = frame["source"]["path"]
                assert frame["name"] == "spin" or (frame["name"] == "main" and
                                                   path == str(job.script)) or \
                    "torch/distributed" in path, frame
                assert client.evaluate(r, "__import__('torch').distributed.get_rank()",
                                       frame["id"]) == str(r)
        threads = children[3].request("threads")["body"]["threads"]
        assert threads[0]["name"].startswith("rank 3 (node 1)")
        states = job.wait_states(lambda s: all(str(v).startswith("paused at") for v in s.values()))
        assert states[3] == f"paused at debug_job.py:{line}"
        assert spin_line  # the others' frames are inside spin(), below this line

        # A step acts on rank 3 alone: it stops again, the others never run.
        tid = stops[3]["body"]["threadId"]
        children[3].request("next", {"threadId": tid})
        assert children[3].wait_event("stopped", timeout=60)["body"]["reason"] == "step"
        assert client.top_frame(3, tid)["line"] > line
        for r in (0, 1, 2):
            assert all(e.get("event") != "continued" for e in list(children[r].events.queue))
        children[3].request("continue", {"threadId": tid})
        for r in (0, 1, 2):  # continue on one rank continued every rank
            children[r].wait_event("continued", timeout=30)
        client.close()
        client = None
        _ends_like_baseline(job, baseline)
    finally:
        if client is not None:
            client.close()


def test_rank_breakpoint_survives_short_timeouts(tmp_path: Path, debug_job, baseline: str) -> None:
    """fi_dist.breakpoint(rank=1) with a 10 s collective timeout, paused 30 s."""
    job = debug_job(2, 2, {"JOB_MODE": "rank_bp", "JOB_BP_RANK": "1",
                                    "JOB_TIMEOUT": "10"}, extra=("--wait-for-client",))
    client = None
    try:
        client = JobClient(job.config)
        client.attach()
        children = client.wait_children(4, timeout=120)
        stop = children[1].wait_event("stopped", timeout=120)
        paused_at = time.monotonic()
        frame = client.top_frame(1, stop["body"]["threadId"])
        assert frame["line"] == marker_line(job.script, "RANK-BP-LINE") + 1
        # The others wait in the rendezvous, not stopped by the hub.
        job.wait_states(lambda s: all("waiting for rank 1" in str(s[r]) for r in (0, 2, 3))
                        and str(s[1]).startswith("paused at"), timeout=60)
        # A step on rank 1 does not release them.
        children[1].request("next", {"threadId": stop["body"]["threadId"]})
        children[1].wait_event("stopped", timeout=60)
        time.sleep(max(0.0, 30 - (time.monotonic() - paused_at)))
        states = job.rank_states()
        assert all("waiting for rank 1" in str(states[r]) for r in (0, 2, 3)), states
        children[1].request("continue", {"threadId": stop["body"]["threadId"]})
        _ends_like_baseline(job, baseline)
    finally:
        if client is not None:
            client.close()


def test_breakpoint_all_ranks_then_post_mortem_without_client(tmp_path: Path, debug_job) -> None:
    """fi_dist.breakpoint() stops every rank at one line; after the client left, rank 1
    raises, waits --post-mortem-wait for a client, and the job fails with the root cause."""
    job = debug_job(2, 1, {"JOB_MODE": "all_bp,raise", "JOB_RAISE_STEP": "3"},
                   extra=("--wait-for-client", "--post-mortem-wait", "2"))
    client = None
    try:
        client = JobClient(job.config)
        client.attach()
        children = client.wait_children(2, timeout=120)
        stops = {r: c.wait_event("stopped", timeout=120) for r, c in children.items()}
        line = marker_line(job.script, "ALL-BP-LINE") + 1
        for r, stop in stops.items():
            assert client.top_frame(r, stop["body"]["threadId"])["line"] == line
            assert stop["body"]["reason"] != "pause"  # stopped there itself, not by the hub
        client.close()  # leaving resumes every rank
        client = None
        assert job.wait(240) != 0
        out = job.output()
        assert "waiting 2s for a debugger client" in out
        assert "ValueError: boom on rank 1" in out
    finally:
        if client is not None:
            client.close()


def test_post_mortem_stops_at_raise_and_shows_blocked_peer(tmp_path: Path, debug_job) -> None:
    job = debug_job(2, 1, {"JOB_MODE": "raise", "JOB_RAISE_RANK": "1",
                                    "JOB_RAISE_DELAY": "3"},
                   extra=("--wait-for-client", "--post-mortem-wait", "60"))
    client = None
    try:
        client = JobClient(job.config, exception_filters=["uncaught"])
        client.attach()
        children = client.wait_children(2, timeout=120)
        stop = children[1].wait_event("stopped", timeout=120)
        assert stop["body"]["reason"] == "exception"
        frame = client.top_frame(1, stop["body"]["threadId"])
        assert frame["name"] == "explode"
        assert frame["line"] == marker_line(job.script, "RAISE-LINE")
        assert client.evaluate(1, "local_marker", frame["id"]) == "7"
        # Rank 0 waits in all_reduce for rank 1: it cannot stop, the hub says so.
        note = client.root.wait_event("output", timeout=30,
                                      pred=lambda e: "blocked" in e["body"]["output"])
        assert "rank 0 (node 0) is blocked in collective" in note["body"]["output"]
        job.wait_states(lambda s: "blocked in collective" in str(s.get(0))
                        and str(s.get(1)).startswith("post-mortem: ValueError at debug_job.py:"))
        # One Continue: the exception goes on exactly once (no second stop), the peer's
        # closed-connection error is a consequence (no stop), the job ends by itself with
        # rank 1's exception as root cause.
        children[1].request("continue", {"threadId": stop["body"]["threadId"]})
        assert job.wait(90) != 0, job.output()[-3000:]
        for r, child in children.items():
            again = [e for e in list(child.events.queue) if e.get("event") == "stopped"]
            assert not again, (r, again)
        out = job.output()
        assert "root cause (first failure): rank 1 (node 1): exit 1: ValueError: boom on rank 1" \
            in out, out[-3000:]
        assert "a consequence, not stopping in the debugger" in out
        ranks = json.loads((job.run_dir() / "ranks" / "1.json").read_text())
        assert ranks["state"] == "failed" and ranks["error"] == "ValueError: boom on rank 1"
    finally:
        if client is not None:
            client.close()


def test_attach_print_without_debug_hub(tmp_path: Path) -> None:
    (tmp_path / ".fi-dist").mkdir()
    out = subprocess.run(cli("attach", "--print"), cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no fi-dist run" in out.stderr


def _wait_output(job: DebugJob, text: str, count: int, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (out := job.output()).count(text) >= count:
            return out
        assert job.proc.poll() is None, f"job ended early:\n{out[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{count}x {text!r} never printed:\n{job.output()[-3000:]}")


def _stopped_or_blocked(job: DebugJob, children: dict[int, DapSession],
                        timeout: float = 120) -> dict[int, dict | str]:
    """Every rank either stops (its ``stopped`` event) or is shown blocked in a collective
    (waiting for a stopped peer: it cannot stop in Python until the call returns)."""
    found: dict[int, dict | str] = {}
    deadline = time.monotonic() + timeout
    while len(found) < len(children) and time.monotonic() < deadline:
        for r, child in children.items():
            if r not in found:
                with contextlib.suppress(DapError):
                    found[r] = child.wait_event("stopped", timeout=0.3)
        states = job.rank_states()
        for r, state in states.items():
            if r not in found and str(state).startswith("blocked in collective"):
                found[r] = str(state)
    assert len(found) == len(children), (found, job.rank_states())
    return found


def _check_resumed(job: DebugJob, children: dict[int, DapSession]) -> None:
    job.wait_states(lambda s: all(v == "running" for v in s.values()))
    time.sleep(1.0)  # no pause left behind: nobody stops on its own afterwards
    assert not any(e.get("event") == "stopped" for c in children.values()
                   for e in list(c.events.queue))
    assert all(v == "running" for v in job.rank_states().values())


def test_untraced_ranks_stop_inside_the_loop_they_already_run(tmp_path: Path, debug_job,
                                                              baseline: str) -> None:
    """Lazy tracing (the default): ranks run without ``sys.settrace`` until the client
    needs it; a pause, then a breakpoint, set while every rank already runs its loop
    (frames entered untraced, the main thread mostly in gloo or spinning) stop the job."""
    release = tmp_path / "release"
    job = debug_job(2, 2, {"JOB_MODE": "loop", "JOB_RELEASE": str(release)})
    client = None
    try:
        out = _wait_output(job, "loop tracing: ", 4)
        assert all(f"rank {r} loop tracing: False" in out for r in range(4)), out[-2000:]
        client = JobClient(job.config)
        client.attach()
        children = client.wait_children(4, timeout=120)
        time.sleep(1.0)  # attached, but nothing needs tracing: every rank keeps running
        assert not any(e.get("event") == "stopped" for c in children.values()
                       for e in list(c.events.queue))

        tid = children[0].request("threads")["body"]["threads"][0]["id"]
        children[0].request("pause", {"threadId": tid})
        found = _stopped_or_blocked(job, children)
        assert isinstance(found[0], dict) and found[0]["body"]["reason"] == "pause"
        frames = children[0].request("stackTrace", {"threadId": found[0]["body"]["threadId"]}
                                     )["body"]["stackFrames"]
        assert any(f["name"] == "main" and f["source"]["path"] == str(job.script)
                   for f in frames), frames  # stopped inside the loop of main()
        # Continue from a rank that never stopped when there is one (what a generic
        # client may do): the job continues, and no rank's session is left stalled.
        blocked = [r for r, f in found.items() if isinstance(f, str)]
        by = blocked[0] if blocked else 0
        children[by].request("continue", {"threadId": found[0]["body"]["threadId"]},
                             timeout=10)
        _check_resumed(job, children)
        for child in children.values():
            assert child.request("threads", timeout=10)["body"]["threads"]

        path, line = str(job.script), marker_line(job.script, "LOOP-LINE")
        for session in (client.root, *children.values()):
            session.request("setBreakpoints", {"source": {"path": path},
                                               "breakpoints": [{"line": line}]})
        found = _stopped_or_blocked(job, children)
        hit = [r for r, s in found.items()
               if isinstance(s, dict) and s["body"]["reason"] == "breakpoint"]
        assert hit, found
        for r in hit:
            frame = client.top_frame(r, found[r]["body"]["threadId"])
            assert frame["line"] == line and frame["name"] == "main"
            assert int(client.evaluate(r, "i", frame["id"])) >= 0
        for session in (client.root, *children.values()):
            session.request("setBreakpoints", {"source": {"path": path}, "breakpoints": []})
        release.touch()
        children[hit[0]].request("continue", {"threadId": found[hit[0]]["body"]["threadId"]})
        client.close()
        client = None
        _ends_like_baseline(job, baseline)
    finally:
        if client is not None:
            client.close()
