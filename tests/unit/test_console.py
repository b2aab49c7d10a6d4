"""The run's output views: prefixed lines when piped, a live rank table on a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from fi_dist.console import LiveView, PlainView


def test_plain_view_prefixes_agent_lines_and_keeps_rank_lines():
    out = io.StringIO()
    view = PlainView(out)
    view.line(1, "[node1 rank3] step 5 loss 0.1")
    view.line(1, "agent warning")
    assert out.getvalue().splitlines() == ["[node1 rank3] step 5 loss 0.1", "[node1] agent warning"]


def test_live_view_tracks_each_ranks_latest_line():
    view = LiveView()
    buf = io.StringIO()
    view.console = Console(file=buf, force_terminal=True, width=160)
    view.start(nnodes=2, nproc_per_node=2)
    view.node_state(0, "running")
    view.line(0, "[node0 rank1] step 7 loss 0.25")
    view.line(1, "[node1 rank2] step 3 loss 0.50")
    view.line(1, "[node1 rank2] step 4 loss 0.40")
    table = view._table()
    view.stop()
    probe = Console(file=io.StringIO(), width=160)
    probe.print(table)
    rendered = probe.file.getvalue()
    assert "step 7 loss 0.25" in rendered and "step 4 loss 0.40" in rendered
    assert "step 3 loss 0.50" not in rendered  # only the latest line per rank
    assert "running" in rendered and "starting" in rendered  # node 1 not yet reported
    assert "[node0 rank1] step 7 loss 0.25" in buf.getvalue()  # lines still scroll above
