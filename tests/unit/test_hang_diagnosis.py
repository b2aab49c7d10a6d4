"""The hang doctor's pure parts as tables: merge, call tree, diagnosis, report round trip."""

from __future__ import annotations

import pytest

from fi_dist.hang.diagnose import diagnose
from fi_dist.hang.ledger import SlotSnapshot
from fi_dist.hang.report import Report, dumps_from_json
from fi_dist.hang.stacks import (
    Frame,
    RankDump,
    ThreadStack,
    merge,
    rank_label,
    rank_ranges,
    render_tree,
    summary,
)

TORCH = "/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py"
MAIN = (Frame("/job/train.py", 80, "<module>"), Frame("/job/train.py", 74, "main"))
IN_REDUCE = (*MAIN, Frame("/job/train.py", 40, "step"), Frame(TORCH, 2950, "all_reduce"))
IN_LOAD = (*MAIN, Frame("/job/train.py", 50, "step"), Frame("/job/train.py", 22, "load_batch"))


def slot(issued: int, completed: int, op: str = "all_reduce", group: str = "default",
         kind: str = "python", line: int = 40, failed: bool = False) -> SlotSnapshot:
    return SlotSnapshot(group=group, kind=kind, issued=issued, completed=completed, op=op,
                        file="/job/train.py" if kind == "python" else "", line=line,
                        func="step" if kind == "python" else "", issued_at=100.0,
                        completed_at=99.0, failed=failed, error="Timed out" if failed else "")


def rank(r: int, frames: tuple[Frame, ...] | None, *slots: SlotSnapshot, state: str = "running",
         node: int | None = None) -> RankDump:
    threads = [ThreadStack("MainThread", 1, True, frames)] if frames is not None else []
    return RankDump(r, r // 2 if node is None else node, 1000 + r, state,
                    "python" if frames is not None else "", threads, list(slots),
                    "" if frames is not None else state)


def test_rank_sets_read_like_ddt() -> None:
    assert rank_ranges([0, 1, 2, 4, 5, 6, 9]) == "0-2,4-6,9"
    assert rank_label([3], {3: 0}) == "rank 3 (node 0)"
    assert rank_label([r for r in range(16) if r != 3]) == "ranks 0-2,4-15 (15)"


def test_summaries_name_the_collective_and_the_users_call_site() -> None:
    assert summary(IN_REDUCE) == "all_reduce <- train.py:40 in step"
    assert summary(IN_LOAD) == "load_batch (train.py:22) <- train.py:50 in step"
    assert summary(()) == "no Python frame"
    hidden = (*MAIN[:1], Frame("/x/fi_dist/runtime/rank_main.py", 90, "main"), *IN_LOAD[1:])
    assert merge([rank(0, hidden)])[0].frames == IN_LOAD  # fi-dist's own frames are not shown


def test_ranks_with_identical_stacks_form_one_group() -> None:
    dumps = [rank(r, IN_REDUCE) for r in (0, 1, 2)] + [rank(3, IN_LOAD)]
    dumps.append(rank(4, None, state="exited 0"))
    groups = merge(dumps)
    assert [(g.ranks, g.text) for g in groups] == [
        ([0, 1, 2], "all_reduce <- train.py:40 in step"),
        ([3], "load_batch (train.py:22) <- train.py:50 in step"),
        ([4], "no stack: exited 0")]
    tree = render_tree(dumps)
    assert tree[0].split() == ["ranks", "0-3", "<module>", "train.py:80"]
    marked = [line.split()[:3] for line in tree if line.startswith("*")]
    assert marked == [["*", "ranks", "0-2"], ["*", "rank", "3"]]  # where they part ways


def test_all_threads_groups_threads_by_name_and_stack() -> None:
    worker = (Frame("/usr/lib/python3.11/threading.py", 995, "_bootstrap"),
              Frame("/job/train.py", 12, "prefetch"))
    dumps = [RankDump(r, 0, 0, "running", "python",
                      [ThreadStack("MainThread", 1, True, IN_REDUCE),
                       ThreadStack("prefetch", 2, False, worker)]) for r in (0, 1)]
    groups = merge(dumps, all_threads=True)
    assert [(g.ranks, g.threads) for g in groups] == [([0, 1], ["MainThread", "MainThread"]),
                                                      ([0, 1], ["prefetch", "prefetch"])]
    report = Report("r", dumps, all_threads=True)
    assert report.summary_lines()[1] == "ranks 0-1 (2) [prefetch]: prefetch (train.py:12)"


CASES = [
    pytest.param(
        [rank(0, IN_REDUCE, slot(412, 411)), rank(1, IN_REDUCE, slot(412, 411)),
         rank(2, IN_REDUCE, slot(412, 411)), rank(3, IN_LOAD, slot(411, 411))],
        "behind",
        "rank 3 is behind: ranks 0-2 wait in all_reduce #412 (train.py:40 in step); rank 3 "
        "completed #411 and is at train.py:22 in load_batch", id="one-behind"),
    pytest.param(
        [rank(0, IN_REDUCE, slot(12, 11)), rank(1, IN_REDUCE, slot(12, 11)),
         rank(2, IN_REDUCE, slot(12, 11, "broadcast", line=44)),
         rank(3, IN_REDUCE, slot(12, 11, "broadcast", line=44))],
        "mismatch",
        "ranks disagree: 0-1 in all_reduce #12 at train.py:40 in step, 2-3 in broadcast #12 at "
        "train.py:44 in step (mismatched collectives)", id="mismatch"),
    pytest.param(
        [rank(0, IN_REDUCE, slot(7, 6)), rank(1, IN_REDUCE, slot(7, 6))],
        "all_waiting",
        "every rank waits in all_reduce #7 (train.py:40 in step); none is behind on it: the "
        "collective itself does not finish (a peer's device or link, or a collective on "
        "another group it depends on)", id="all-waiting"),
    pytest.param(
        [rank(0, IN_REDUCE, slot(5, 4)), rank(1, None, slot(4, 4), state="failed (exit 1)")],
        "behind",
        "rank 1 is behind: rank 0 waits in all_reduce #5 (train.py:40 in step); rank 1 "
        "completed #4 and then failed (exit 1)", id="behind-rank-died"),
    pytest.param(
        [rank(0, IN_REDUCE, slot(5, 4)),
         rank(1, IN_REDUCE, slot(4, 4), slot(2, 1, "all_gather", group="tp"))],
        "behind",
        "rank 1 is behind: rank 0 waits in all_reduce #5 (train.py:40 in step); rank 1 "
        "completed #4 and waits in all_gather #2 on group tp (train.py:40 in step)",
        id="behind-in-another-group"),
    pytest.param(  # DDP: no Python collective in flight; the Flight Recorder's C++ counts
        [rank(0, IN_REDUCE, slot(2, 2, "broadcast"), slot(58, 57, "gloo:allreduce",
                                                          "0:default_pg", "flight recorder")),
         rank(1, IN_LOAD, slot(2, 2, "broadcast"), slot(57, 57, "gloo:allreduce",
                                                        "0:default_pg", "flight recorder"))],
        "behind",
        "rank 1 is behind: rank 0 waits in gloo:allreduce #58 (issued from C++, e.g. DDP's "
        "gradient all-reduce; Flight Recorder); rank 1 completed #57 and is at train.py:22 in "
        "load_batch", id="ddp-flight-recorder"),
    pytest.param(
        [rank(0, IN_REDUCE, slot(5, 5)), rank(1, IN_LOAD, slot(5, 5))],
        "none", "no rank waits in a collective (every rank completed #5)", id="progressing"),
    pytest.param(
        [rank(0, IN_REDUCE, slot(5, 4, failed=True)), rank(1, IN_LOAD, slot(4, 4))],
        "behind",
        "rank 1 is behind: rank 0 failed in all_reduce #5 (train.py:40 in step); rank 1 "
        "completed #4 and is at train.py:22 in load_batch", id="timed-out"),
]


@pytest.mark.parametrize(("dumps", "kind", "text"), CASES)
def test_diagnosis(dumps: list[RankDump], kind: str, text: str) -> None:
    found = diagnose(dumps)
    assert (found.kind, found.text) == (kind, text)


def test_the_report_ends_with_the_diagnosis_and_round_trips_through_json() -> None:
    dumps = CASES[0].values[0]
    report = Report("run-1", dumps, elapsed=0.25)
    text = report.text()
    assert text.splitlines()[0].startswith("fi-dist stacks: run run-1: 4 ranks on 2 nodes")
    assert text.splitlines()[1] == "ranks 0-2 (3): all_reduce <- train.py:40 in step"
    assert text.splitlines()[-1] == f"diagnosis: {CASES[0].values[2]}"
    data = report.to_json()
    assert data["diagnosis"]["behind"] == [3] and data["diagnosis"]["seq"] == 412
    again = dumps_from_json(data)
    assert Report("run-1", again).text() == Report("run-1", dumps).text()
