"""The hub under bad input: garbage on both ports, unauthenticated peers, client churn.

A real hub process with real light debuggee ranks (debugpy + the hub agent, no torch
work). Every bad connection is closed with a log line; the hub and the ranks go on,
and a well-behaved client then still reaches and stops every rank.
"""

from __future__ import annotations

import random
import socket
import time

import pytest

from fi_dist.runtime.debug.protocol import encode
from tests.support.dap_client import DapSession, JobClient
from tests.support.debug_job import StandaloneHub, marker_line

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def hub(standalone_hub) -> StandaloneHub:
    return standalone_hub()


def _blast(port: int, blob: bytes, wait: float = 2.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(blob)
        except OSError:
            return b""
        s.settimeout(wait)
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (TimeoutError, OSError):
            pass
        return got


def _fuzz_blobs(rng: random.Random) -> list[bytes]:
    blobs = [
        b"Content-Length: 99999999999\r\n\r\n",
        b"Content-Length: -1\r\n\r\n{}",
        b"Content-Length: 4\r\n\r\nnull",
        b"Content-Length: 9\r\n\r\n\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8\xf7",
        b"\r\n\r\n\r\n\r\n",
        b"A" * 70000,
        encode({"seq": 1, "type": "request", "command": "evaluate",
                "arguments": {"expression": "1"}}),  # before any attach
        encode({"seq": 1, "type": "request", "command": "attach",
                "arguments": {"fiDistToken": "wrong"}}),
        encode({"seq": "x", "type": "request", "command": "initialize"}),
    ]
    for _ in range(20):
        n = rng.randint(1, 300)
        blobs.append(bytes(rng.randrange(256) for _ in range(n)))
    return blobs


def test_garbage_and_wrong_tokens_are_refused_and_the_hub_serves_on(hub: StandaloneHub) -> None:
    hub.start_ranks(2)
    rng = random.Random(1234)
    started = time.monotonic()
    for blob in _fuzz_blobs(rng):
        _blast(hub.ide_port, blob, wait=0.5)
        _blast(hub.rank_port, blob + b"\n", wait=0.5)
    refused = _blast(hub.rank_port, b'{"kind":"control","token":"nope","rank":0}\n')
    assert refused.startswith(b'{"challenge":"')
    assert refused.endswith(b'\n{"ok":false,"error":"no proof of the job token"}\n')
    unknown = DapSession("127.0.0.1", hub.ide_port, "unknown")
    unknown.request("initialize", {})
    resp = unknown.request("frobnicate", {}, check=False)
    assert not resp["success"] and "before an authenticated attach" in resp["message"]
    unknown.close()
    assert hub.alive()
    log = "".join(hub.lines)
    # Refusals are logged, folded into at most a line a second per port.
    assert "IDE port: " in log and "rank port: " in log and "more like it" in log
    lines = sum(1 for line in log.splitlines() if "port: " in line)
    assert lines <= 2 * (time.monotonic() - started) + 4, log

    client = JobClient(hub.config, breakpoints={str(hub.script): [
        marker_line(hub.script, "LIGHT-WORK-LINE")]})
    client.attach()
    children = client.wait_children(2, timeout=60)
    for child in children.values():
        child.wait_event("stopped", timeout=60)
    # A second client is turned away while the first is attached.
    other = DapSession("127.0.0.1", hub.ide_port, "second")
    other.request("initialize", {})
    resp = other.request("attach", hub.config, check=False)
    assert not resp["success"] and "already attached" in resp["message"]
    other.close()
    # The client vanishing (no disconnect request) resumes every rank.
    for child in children.values():
        child.close()
    client.root.close()
    time.sleep(1.0)
    again = JobClient(hub.config)
    again.attach()
    kids = again.wait_children(2, timeout=60)
    for child in kids.values():
        threads = child.request("threads")["body"]["threads"]
        assert threads and all(t["name"].startswith("rank ") for t in threads)
        child.request("pause", {"threadId": threads[0]["id"]})
        stop = child.wait_event("stopped", timeout=30)
        assert stop["body"]["reason"] == "pause"
        frames = child.request("stackTrace", {"threadId": stop["body"]["threadId"]})
        names = [f["name"] for f in frames["body"]["stackFrames"]]
        # Running again after the first client left: paused in its loop, not at the old
        # breakpoint (which the disconnect removed).
        assert "<module>" in names
        break
    again.close()
    assert hub.alive() and all(p.poll() is None for p in hub.ranks)


def test_rank_dying_while_paused_is_reported(hub: StandaloneHub) -> None:
    hub.start_ranks(2)
    client = JobClient(hub.config, breakpoints={str(hub.script): [
        marker_line(hub.script, "LIGHT-WORK-LINE")]})
    client.attach()
    children = client.wait_children(2, timeout=60)
    stops = {r: c.wait_event("stopped", timeout=60) for r, c in children.items()}
    hub.ranks[1].kill()
    note = client.root.wait_event("output", timeout=30,
                                  pred=lambda e: "exited" in e["body"]["output"])
    assert "rank 1 (node 0) exited (was stopped)" in note["body"]["output"]
    children[1].wait_event("terminated", timeout=30)
    frame = client.top_frame(0, stops[0]["body"]["threadId"])  # rank 0 still inspectable
    assert client.evaluate(0, "i * 2", frame["id"]).isdigit()
    client.close()
    assert hub.alive()


def test_client_without_start_debugging_gets_debugpy_attach_events(hub: StandaloneHub) -> None:
    hub.start_ranks(2)
    root = DapSession("127.0.0.1", hub.ide_port, "plain-client")
    root.request("initialize", {"adapterID": "debugpy"})  # no supportsStartDebuggingRequest
    attach = root.send_request("attach", hub.config)
    root.wait_event("initialized")
    root.request("configurationDone")
    root.wait_response(attach)
    seen = {}
    while len(seen) < 2:
        ev = root.wait_event("debugpyAttach", timeout=60)
        seen[ev["body"]["fiDistRank"]] = ev["body"]
    for rank, body in seen.items():
        assert body["name"] == f"rank {rank} (node 0)" and body["request"] == "attach"
        assert body["connect"] == {"host": "127.0.0.1", "port": hub.ide_port}
        assert body["fiDistToken"] == hub.token
    root.close()
