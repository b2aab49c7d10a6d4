"""A rank's own ending is final, and which errors are consequences of a peer's failure."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fi_dist.rundir import RunDir
from fi_dist.runtime.debug.rank_hook import is_comm_error
from fi_dist.runtime.heartbeat import Heartbeat


def test_a_later_debugger_state_never_overwrites_the_failure_record(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    told: list[str] = []
    beat = Heartbeat(run, 3)
    beat.listen(told.append)
    beat.state("post-mortem: ValueError")
    beat.state("running", quiet=True)  # the hub's own note: written, not echoed
    beat.finish("failed", exitcode=1, error="ValueError: deliberate", ended=12.5)
    beat.state("running")  # the hub's "running" after the Continue, arriving late
    beat.state("paused at f.py:3", quiet=True)
    beat.finish("exited", exitcode=0)  # only the first ending counts
    record = json.loads(run.rank_file(3).read_text())
    assert (record["state"], record["exitcode"], record["error"], record["ended"]) == (
        "failed", 1, "ValueError: deliberate", 12.5)
    assert told == ["post-mortem: ValueError", "exited 1"]


def test_threads_writing_one_rank_record_leave_valid_json_with_every_field(tmp_path: Path) -> None:
    """The heartbeat's thread and the task's own record writer run in one process: the
    record is never torn (two writes into one temporary file) and no field is lost."""
    run = RunDir(tmp_path)
    start = threading.Barrier(4)

    def writer(t: int) -> None:
        start.wait()
        for i in range(150):
            # Values of varying length: a torn file shows as text after the JSON's end.
            run.write_rank(0, **{f"t{t}": "x" * (i % 40), "pid": 7})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for _ in range(300):
        text = run.rank_file(0).read_text() if run.rank_file(0).exists() else "{}"
        json.loads(text)  # raises on a torn file
    for th in threads:
        th.join()
    record = json.loads(run.rank_file(0).read_text())
    assert {f"t{t}" for t in range(4)} <= set(record), record
    assert [p.name for p in (tmp_path / "ranks").iterdir()] == ["0.json"]  # no temp left


def test_a_listener_that_fails_does_not_fail_the_rank(tmp_path: Path) -> None:
    beat = Heartbeat(None, 0)

    def broken(state: str) -> None:
        raise OSError("hub gone")

    beat.listen(broken)
    beat.state("running")
    beat.finish("exited", exitcode=0)


@pytest.mark.parametrize(("exc", "consequence"), [
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by "
                  "peer [127.0.0.1]:1234"), True),
    (RuntimeError("Connection reset by peer"), True),
    (type("DistBackendError", (RuntimeError,), {})("NCCL communicator was aborted"), True),
    (ValueError("deliberate"), False),
    (RuntimeError("CUDA out of memory"), False),
    (KeyError("c"), False),
])
def test_which_errors_look_like_a_lost_collective(exc: BaseException, consequence: bool) -> None:
    assert is_comm_error(exc) is consequence
