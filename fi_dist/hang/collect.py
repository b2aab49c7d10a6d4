"""Collect every rank's stack from a hang directory, without pausing anything.

For each rank whose ledger says its dump thread is ready (and whose pid still is that
process: same start time), send :data:`~fi_dist.hang.ledger.DUMP_SIGNAL` and wait for
its ``<rank>.stacks.json`` to be replaced. A rank that does not answer within the
timeout (C code holding the GIL) is asked with :data:`~fi_dist.hang.ledger.FAULT_SIGNAL`
and its faulthandler text is parsed instead. Ranks that ended are reported from their
ledger (how they ended, the collective they were in).

Used by the client (``fi-dist stacks`` / ``status`` for local and Ray runs, the
supervisor's hang watch), by the node agent's idle culler, and in a pod as
``python -m fi_dist.hang.collect --json`` (the node's ranks, for a client that merges
the pods' answers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from fi_dist.hang.ledger import (
    DUMP_SIGNAL,
    FAULT_SIGNAL,
    LedgerSnapshot,
    hang_dir,
    read_ledgers,
)
from fi_dist.hang.report import Report
from fi_dist.hang.stacks import Frame, RankDump, ThreadStack

ANSWER_TIMEOUT = 3.0
"""Seconds a rank's dump thread gets to answer before faulthandler is asked."""
FAULT_QUIET = 0.1
"""faulthandler has no end marker: its file is complete once it stopped growing this long."""
WAITING_AFTER = 2.0
"""``fi-dist status`` collects stacks only once a rank has waited this long in a collective."""

_THREAD = re.compile(r"^(Current thread|Thread) (0x[0-9a-fA-F]+)(?: \[(.*)\])? \(most recent "
                     r"call first\):$")
_FRAME = re.compile(r'^  File "(.*)", line (\d+) in (.*)$')


def parse_faulthandler(text: str, main_ident: int) -> list[ThreadStack]:
    """faulthandler's dump of every thread (innermost first) as stacks (outermost first)."""
    threads: list[ThreadStack] = []
    frames: list[Frame] = []
    ident = -1
    name = ""

    def close() -> None:
        if ident >= 0:
            threads.append(ThreadStack(name or f"thread {ident:#x}", ident, ident == main_ident,
                                       tuple(reversed(frames))))

    for line in text.splitlines():
        if m := _THREAD.match(line):
            close()
            ident, name, frames = int(m.group(2), 16), m.group(3) or "", []
            if ident == main_ident:
                name = "MainThread"
        elif m := _FRAME.match(line):
            frames.append(Frame(m.group(1), int(m.group(2)), m.group(3)))
    close()
    return threads


def _answer_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _signal(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _wait_answers(directory: Path, asked: dict[int, tuple[int, int] | None],
                  timeout: float) -> dict[int, dict]:
    answers: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    delay = 0.002
    while asked and time.monotonic() < deadline:
        for rank in list(asked):
            path = directory / f"{rank}.stacks.json"
            now = _answer_id(path)
            if now is None or now == asked[rank]:
                continue
            try:
                answers[rank] = json.loads(path.read_text())
                del asked[rank]
            except (OSError, ValueError):
                continue  # replaced again meanwhile: read it next round
        if asked:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.02)
    return answers


def _faulthandler(directory: Path, ledgers: dict[int, LedgerSnapshot], ranks: list[int],
                  timeout: float) -> dict[int, list[ThreadStack]]:
    files = {r: directory / f"{r}.fault" for r in ranks}
    asked = []
    for r in ranks:
        try:
            os.truncate(files[r], 0)  # the rank appends (O_APPEND): the dump starts at 0
        except OSError:
            continue
        if _signal(ledgers[r].pid, FAULT_SIGNAL):
            asked.append(r)
    sizes: dict[int, tuple[int, float]] = {}
    out: dict[int, list[ThreadStack]] = {}
    deadline = time.monotonic() + timeout
    while asked and time.monotonic() < deadline:
        time.sleep(0.02)
        for r in list(asked):
            try:
                size = files[r].stat().st_size
            except OSError:
                continue
            last = sizes.get(r)
            if size and last and last[0] == size and time.monotonic() - last[1] >= FAULT_QUIET:
                out[r] = parse_faulthandler(files[r].read_text(errors="replace"),
                                            ledgers[r].main_ident)
                asked.remove(r)
            elif not last or last[0] != size:
                sizes[r] = (size, time.monotonic())
    return out


def _threads(answer: dict) -> list[ThreadStack]:
    return [ThreadStack(t["name"], int(t["ident"]), bool(t["main"]),
                        tuple(Frame(f, int(n), fn) for f, n, fn in t["frames"]))
            for t in answer.get("threads") or []]


def collect(directory: Path, run_id: str = "", all_threads: bool = False,
            timeout: float = ANSWER_TIMEOUT, fallback: bool = True,
            ranks: set[int] | None = None) -> Report:
    """Ask every rank in ``directory`` (or only ``ranks``) for its stacks; merge them.

    Args:
        all_threads: keep every thread's stack in the report's groups (the dumps always
            hold every thread).
        timeout: seconds each rank's dump thread gets to answer.
        fallback: ask faulthandler for the ranks that did not answer.
    """
    start = time.monotonic()
    ledgers = read_ledgers(directory)
    if ranks is not None:
        ledgers = {r: v for r, v in ledgers.items() if r in ranks}
    live = {r: v for r, v in ledgers.items() if v.alive}
    asked = {}
    for r, v in live.items():
        if v.ready:
            before = _answer_id(directory / f"{r}.stacks.json")
            if _signal(v.pid, DUMP_SIGNAL):
                asked[r] = before
    answers = _wait_answers(directory, dict(asked), timeout)
    late = sorted(set(asked) - set(answers))
    faults = _faulthandler(directory, live, late, timeout) if fallback and late else {}
    fresh = read_ledgers(directory)  # after the answers: the dump threads updated them
    dumps = []
    for r, v in sorted(ledgers.items()):
        v = fresh.get(r, v)
        state = v.state_text if v.state or r not in live else "running"
        if state == "running" and not v.alive:
            state = "gone"
        dump = RankDump(r, v.node, v.pid, state, slots=list(v.slots))
        if r in answers:
            dump.source = "python"
            dump.threads = _threads(answers[r])
            dump.flight_recorder = answers[r].get("flight_recorder")
        elif r in faults:
            dump.source = "faulthandler"
            dump.threads = faults[r]
            dump.note = (f"its dump thread did not answer within {timeout:g}s (C code holding "
                         "the GIL?): stacks from faulthandler")
        elif r in asked:
            dump.note = f"no answer within {timeout:g}s"
        elif r in live:
            dump.note = "starting (its dump thread is not ready yet)"
        else:
            dump.note = state
        dumps.append(dump)
    world = max((v.world for v in ledgers.values()), default=0)
    if ranks is None:
        for r in range(world):
            if r not in ledgers:
                dumps.append(RankDump(r, -1, state="not started",
                                      note="no ledger (not started yet, or the hang doctor is "
                                           "off in it)"))
    dumps.sort(key=lambda d: d.rank)
    return Report(run_id, dumps, all_threads, elapsed=time.monotonic() - start)


def ledger_report(directory: Path, run_id: str = "") -> Report:
    """A report from the ledgers alone (no signal to any rank, no stacks)."""
    dumps = [RankDump(r, v.node, v.pid, v.state_text if v.state else
                      ("running" if v.alive else "gone"), slots=list(v.slots),
                      note="stack not collected")
             for r, v in sorted(read_ledgers(directory).items())]
    return Report(run_id, dumps)


def status_diagnosis(directory: Path, run_id: str = "", waited: float = WAITING_AFTER) -> str:
    """For ``fi-dist status``: the diagnosis once a rank waited ``waited`` s in a collective.

    Collectives in flight for a moment are what training does; only then are the ranks
    asked for their stacks. Empty when the directory has no ledger (hang doctor off).
    """
    quick = ledger_report(directory, run_id)
    if not quick.dumps:
        return ""
    now = time.time()
    stuck = any(s.in_flight and (s.failed or now - s.issued_at >= waited)
                for d in quick.dumps for s in d.slots)
    if stuck and any(d.state == "running" for d in quick.dumps):
        return collect(directory, run_id).diagnosis.text
    return f"no rank has waited {waited:g}s in a collective"


def main(argv: list[str] | None = None) -> int:
    """``python -m fi_dist.hang.collect [--json] [--all-threads]``: this node's ranks."""
    from fi_dist import contract

    p = argparse.ArgumentParser(prog="fi_dist.hang.collect", description=main.__doc__)
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.add_argument("--all-threads", action="store_true")
    p.add_argument("--dir", default=None, help="the hang directory (default: the job's)")
    args = p.parse_args(argv)
    job = contract.current()
    directory = Path(args.dir) if args.dir else hang_dir(job.run_dir, job.run_id)
    report = collect(directory, job.run_id, all_threads=args.all_threads)
    if args.json:
        json.dump(report.to_json(), sys.stdout)
        print()
    else:
        print(report.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
