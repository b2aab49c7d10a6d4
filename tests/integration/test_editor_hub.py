"""What the editor sees of the hub, at the DAP level: a real hub, real light ranks, a real
DAP client (tests.support.dap_client) attaching as VSCode does.

Rank order of the child sessions, the root session's state (one thread for the job,
stopped and continued with it), the Ranks view's rows (``fiDist/ranks``), a rank
session's Disconnect ending the whole debug session, one ``important`` notice for ranks
blocked in native code, and completions that do not flood the console with warnings.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

import pytest

from tests.support.dap_client import DapError, DapSession, JobClient
from tests.support.debug_job import StandaloneHub, marker_line

pytestmark = pytest.mark.timeout(180)


class RecordingClient(JobClient):
    """A JobClient that remembers the order of the hub's startDebugging requests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.announced: list[int] = []
        super().__init__(*args, **kwargs)

    def _reverse(self, session: DapSession, req: dict[str, Any]) -> None:
        if req.get("command") == "startDebugging":
            self.announced.append(req["arguments"]["configuration"]["fiDistRank"])
        super()._reverse(session, req)


def _ranks(session: DapSession) -> dict[str, Any]:
    return session.request("fiDist/ranks", {})["body"]


def _wait_rows(session: DapSession, pred: Any, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = _ranks(session)["ranks"]
        if pred(rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"rows never matched: {rows}")


def _attach_all(hub: StandaloneHub, world: int, **kwargs: Any) -> RecordingClient:
    """Attach once every rank is connected (a first client waits for them, then leaves)."""
    first = JobClient(hub.config)
    first.attach()
    first.wait_children(world, timeout=90)
    first.close()
    client = RecordingClient({**hub.config, "redirectOutput": True}, **kwargs)
    client.attach()
    client.wait_children(world, timeout=90)
    return client


def test_rank_order_root_state_ranks_view_and_disconnect_from_a_rank(standalone_hub) -> None:
    hub = standalone_hub()
    hub.start_ranks(4, per_node=2)
    line = marker_line(hub.script, "LIGHT-LAST-LINE")
    client = _attach_all(hub, 4)
    try:
        # Children are opened in rank order, whatever order the ranks connected in.
        assert client.announced == [0, 1, 2, 3]
        root = client.root
        (thread,) = root.request("threads")["body"]["threads"]
        assert thread == {"id": 1, "name": "fi-dist: 4 ranks: 4 running"}
        body = _ranks(root)
        assert [r["rank"] for r in body["ranks"]] == [0, 1, 2, 3]
        assert [r["node"] for r in body["ranks"]] == [0, 0, 1, 1]
        assert body["stopped"] is False and body["summary"] == "4 ranks: 4 running"

        for session in (root, *client.children.values()):
            session.request("setBreakpoints", {"source": {"path": str(hub.script)},
                                               "breakpoints": [{"line": line}]})
        stops = {r: c.wait_event("stopped", timeout=60) for r, c in client.children.items()}
        assert stops[3]["body"]["reason"] == "breakpoint"
        # Paused by the break-all: the IDE keeps showing rank 3, the one that hit it.
        assert all(stops[r]["body"].get("preserveFocusHint") for r in (0, 1, 2))
        assert not stops[3]["body"].get("preserveFocusHint")
        # The root session is paused with the job, without taking the focus.
        root_stop = root.wait_event("stopped", timeout=30)
        assert root_stop["body"]["threadId"] == 1 and root_stop["body"]["preserveFocusHint"]
        assert root.request("stackTrace", {"threadId": 1})["body"]["stackFrames"] == []
        rows = _wait_rows(root, lambda rows: all(r["text"].startswith("paused at")
                                                 for r in rows))
        assert rows[3]["text"] == f"paused at light_rank.py:{line}"
        assert {r["state"] for r in rows} == {"paused"} and all(r["session"] for r in rows)
        assert root.request("threads")["body"]["threads"][0]["name"] == \
            "fi-dist: 4 ranks: 4 paused"
        event = root.wait_event("fiDist/ranks", timeout=10,
                                pred=lambda e: e["body"]["stopped"])
        assert event["body"]["focus"] == 3
        assert _ranks(client.children[1])["ranks"] == _ranks(root)["ranks"]

        # Restarting rank 2's view (VSCode's Restart: disconnect with restart) ends only it.
        client.children[2].request("disconnect", {"restart": True})
        assert client.children[2].closed.wait(10)
        time.sleep(0.5)
        assert not root.closed.is_set()
        assert not any(e.get("event") == "terminated" for e in list(root.events.queue))
        # Disconnect with rank 1's session selected: the whole debug session ends.
        client.children[1].request("disconnect", {"terminateDebuggee": False})
        root.wait_event("terminated", timeout=30)
        for r in (0, 3):
            client.children[r].wait_event("terminated", timeout=30)
        assert root.closed.wait(30), "the root session stayed open"
    finally:
        client.close()

    # Every rank resumed, its breakpoints gone: a new client sees them all running.
    again = JobClient(hub.config)
    try:
        again.attach()
        children = again.wait_children(4, timeout=90)
        rows = _wait_rows(again.root, lambda rows: all(r["state"] == "running" for r in rows))
        assert len(rows) == 4
        time.sleep(1.0)
        assert not any(e.get("event") == "stopped" for c in children.values()
                       for e in list(c.events.queue))
        # A rank exiting ends its own view only, never the debug session.
        hub.ranks[0].kill()
        hub.ranks[0].wait()
        children[0].wait_event("terminated", timeout=30)
        rows = _wait_rows(again.root, lambda rows: rows[0]["state"] == "exited")
        assert rows[0]["text"].startswith("exited")
        assert not again.root.closed.is_set()
        assert again.root.request("threads")["body"]["threads"][0]["name"] == \
            "fi-dist: 4 ranks: 3 running, 1 exited"
    finally:
        again.close()


def test_ranks_blocked_in_native_code_make_one_important_notice(standalone_hub) -> None:
    hub = standalone_hub()
    hub.start_ranks(3, per_node=3, env={"LIGHT_BLOCK": "1"})
    line = marker_line(hub.script, "LIGHT-LAST-LINE")
    client = _attach_all(hub, 3)
    try:
        for session in (client.root, *client.children.values()):
            session.request("setBreakpoints", {"source": {"path": str(hub.script)},
                                               "breakpoints": [{"line": line}]})
        client.children[2].wait_event("stopped", timeout=60)
        # One notice, to the session of the rank that stopped first (the focused one).
        note = client.children[2].wait_event(
            "output", timeout=30, pred=lambda e: e["body"].get("category") == "important")
        block = marker_line(hub.script, "LIGHT-BLOCK-LINE")
        assert note["body"]["output"].startswith(
            f"fi-dist: rank 0 (node 0) and rank 1 (node 0) are blocked in native code at "
            f"light_rank.py:{block}"), note
        rows = _wait_rows(client.root, lambda rows: [r["state"] for r in rows] ==
                          ["blocked", "blocked", "paused"])
        assert rows[0]["text"] == f"blocked in native code at light_rank.py:{block}"
        time.sleep(1.0)
        notes = [e for c in client.children.values() for e in list(c.events.queue)
                 if e.get("event") == "output" and e["body"].get("category") == "important"]
        assert notes == [], notes  # the others got the detail on their console only
        # The extension says which rank the user looks at: the next notice goes there.
        client.root.request("fiDist/focus", {"rank": 1})
        assert _ranks(client.root)["focus"] == 1
    finally:
        client.close()


def test_completions_and_evaluate_do_not_flood_the_console_with_warnings(
        standalone_hub) -> None:
    hub = standalone_hub()
    hub.start_ranks(1, per_node=1)
    line = marker_line(hub.script, "LIGHT-LAST-LINE")
    client = _attach_all(hub, 1, breakpoints={str(hub.script): [line]})
    try:
        child = client.children[0]
        stop = child.wait_event("stopped", timeout=60)
        frame = client.top_frame(0, stop["body"]["threadId"])
        targets = child.request("completions", {"text": "noisy.", "column": 7,
                                                "frameId": frame["id"]})["body"]["targets"]
        assert {"alpha", "beta"} <= {t["label"] for t in targets}
        assert client.evaluate(0, "noisy.alpha", frame["id"]) == "1"
        # The console itself works: something the user prints arrives, after anything
        # the completions and the evaluation printed.
        client.evaluate(0, "__import__('sys').stderr.write('visible marker\\n')", frame["id"])
        printed: list[str] = []
        deadline = time.monotonic() + 15
        while not any("visible marker" in text for text in printed):
            assert time.monotonic() < deadline, printed
            with contextlib.suppress(queue.Empty):
                event = child.events.get(timeout=0.5)
                if event.get("event") == "output":
                    printed.append(event["body"].get("output", ""))
        assert not [text for text in printed if "deprecated" in text], printed
    finally:
        client.close()


def test_a_child_of_a_debugpy_root_is_debugpy_and_of_a_fi_dist_root_fi_dist(
        standalone_hub) -> None:
    hub = standalone_hub()
    hub.start_ranks(1, per_node=1)
    seen: dict[str, str] = {}
    for kind in ("fi-dist", "debugpy"):
        root = DapSession("127.0.0.1", hub.ide_port, kind,
                          on_reverse=lambda s, req, kind=kind: seen.__setitem__(
                              kind, req["arguments"]["configuration"]["type"]))
        try:
            got = threading.Event()
            root.request("initialize", {"adapterID": kind,
                                        "supportsStartDebuggingRequest": True})
            attach = root.send_request("attach", {**hub.config, "type": kind})
            root.wait_event("initialized")
            root.request("configurationDone")
            root.wait_response(attach)
            deadline = time.monotonic() + 30
            while kind not in seen and time.monotonic() < deadline:
                got.wait(0.1)
        finally:
            with contextlib.suppress(DapError, OSError):
                root.request("disconnect", {}, timeout=5)
            root.close()
            time.sleep(0.5)
    assert seen == {"fi-dist": "fi-dist", "debugpy": "debugpy"}
