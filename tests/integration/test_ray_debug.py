"""Debugging Ray ranks through the hub: the same DAP client as the hub's own tests.

A real ``fi-dist run --launcher ray --debug`` job (rank actors, the hub started by the
rank-0 actor on rank 0's node), attached with :class:`JobClient` through the one IDE
port in the launch.json the hub wrote. A plain ``breakpoint()`` in a rank stops in
that client, not in Ray's own debugger.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.dap_client import JobClient

pytestmark = pytest.mark.timeout(500)

SCRIPT = '''\
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
x = torch.tensor([float(rank + 1)])
dist.all_reduce(x)
if rank == 1:
    local_marker = 41
    breakpoint()  # BP-LINE
    local_marker += 1
dist.barrier()
if rank == 0:
    print(f"sum {x.item()}", flush=True)
dist.destroy_process_group()
'''


def test_breakpoint_in_a_ray_rank_stops_in_the_hub_client(tmp_path: Path, debug_job,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    from tests.support import debug_job as debug_client

    # DebugJob runs debug_client's job script; this test brings its own.
    monkeypatch.setattr(debug_client, "JOB_SCRIPT", SCRIPT)
    job = debug_job(2, 1, {}, extra=("--launcher", "ray", "--wait-for-client"))
    client = None
    try:
        assert job.config["connect"]["host"] == "127.0.0.1"
        client = JobClient(job.config)
        client.attach()
        children = client.wait_children(2, timeout=180)
        assert {r: client.child_names[r] for r in children} == {
            0: "rank 0 (node 0)", 1: "rank 1 (node 1)"}
        stop = children[1].wait_event("stopped", timeout=180)
        frame = client.top_frame(1, stop["body"]["threadId"])
        bp_line = SCRIPT.splitlines().index("    breakpoint()  # BP-LINE") + 1
        assert frame["line"] in (bp_line, bp_line + 1), frame
        assert client.evaluate(1, "local_marker", frame["id"]) == "41"
        assert client.evaluate(1, "dist.get_rank()", frame["id"]) == "1"
        children[1].request("continue", {"threadId": stop["body"]["threadId"]})
        client.close()
        client = None
        assert job.wait(240) == 0, job.output()[-3000:]
        assert "sum 3.0" in job.output()
        assert "ray.util.rpdb" not in job.output()
    finally:
        if client is not None:
            client.close()
