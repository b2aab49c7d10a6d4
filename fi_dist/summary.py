"""Turn a finished attempt's run directory into per-rank outcomes and one root cause.

Like torchelastic's error files: every failed rank's error is read, and the FIRST
failure (by timestamp) is reported as the root cause; the others are consequences.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field

from fi_dist.rundir import RunDir

NODE_LOST_EXIT = 137
"""Exit code of a node the launcher lost (like an evicted pod: retryable, >= 128)."""


@dataclass
class RankOutcome:
    rank: int
    node: int
    exitcode: int | None
    """None when the rank was ended from outside before it could report."""
    detail: str = ""


@dataclass
class RootCause:
    label: str
    exitcode: int
    message: str
    traceback: str | None
    timestamp: float


@dataclass
class Summary:
    outcomes: list[RankOutcome]
    root_cause: RootCause | None
    exitcode: int
    checkpoint_step: int | None = None
    """The step every rank's Checkpointer committed before a preemption exit."""
    faults: list[str] = field(default_factory=list)
    """The network faults injected so far (``fi-dist chaos``), one line each."""

    @property
    def ok(self) -> bool:
        return self.exitcode == 0


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code if code < 0 else code - 128).name
    except ValueError:
        return f"signal {code}"


def summarize(run: RunDir, world_size: int, nproc_per_node: int,
              node_exits: dict[int, int | None]) -> Summary:
    """Combine rank files, node results and node exit codes into a :class:`Summary`."""
    ranks = run.ranks()
    nodes = run.nodes()
    failures: list[RootCause] = []
    outcomes: list[RankOutcome] = []
    for node_rank, result in nodes.items():
        for r, f in result.get("failures", {}).items():
            failed = int(f["exitcode"])
            info = ranks.get(int(r), {})
            msg = f.get("message") or ""
            if info.get("state") == "failed" and info.get("ended"):
                # The rank's own exception, timed to the microsecond (torchelastic's
                # error-file timestamps are whole seconds, too coarse to order ranks).
                when = float(info["ended"])
            else:
                # Ended from outside without raising: a consequence, known only when
                # its node agent noticed.
                when = float(result.get("ended") or f.get("timestamp") or 0)
                if failed < 0:
                    msg = f"killed by {_signal_name(failed)}"
            failures.append(RootCause(f"rank {r} (node {node_rank})", failed, msg,
                                      f.get("traceback"), when))
    for p in run.preemptions():
        failures.append(RootCause(f"node {p['node']}", 143,
                                  "preempted (SIGTERM to every process of the node)",
                                  None, float(p["time"])))
    for lost in run.lost_nodes():
        failures.append(RootCause(
            f"node {lost['node']}", NODE_LOST_EXIT,
            f"lost: its agent was unreachable for {float(lost['silent_for']):.0f}s (no "
            "heartbeat: a network partition or a hung node), treated as failed", None,
            float(lost["time"])))
    failures += _hang_causes(run)
    failed_codes = {int(c.label.split()[1]): c.exitcode for c in failures
                    if c.label.startswith("rank")}
    for rank in range(world_size):
        node = rank // nproc_per_node
        info = ranks.get(rank, {})
        if rank in failed_codes:
            code: int | None = failed_codes[rank]
        elif info.get("state") in ("exited", "failed"):
            code = info.get("exitcode")
        elif nodes.get(node, {}).get("exitcode") == 0:
            code = 0  # its node agent's launch succeeded (a program exec'd by rank_main)
        else:
            code = None
        detail = info.get("error", "") if code else ""
        if code is None:
            detail = "ended before reporting (stopped by its node agent or the launcher)"
        outcomes.append(RankOutcome(rank, node, code, detail))
    for node_rank, code in sorted(node_exits.items()):
        explained = any(c.label.endswith(f"(node {node_rank})") or c.label == f"node {node_rank}"
                        for c in failures)
        if code and not explained:
            result = nodes.get(node_rank, {})
            msg = result.get("error") or (
                f"node agent ended by {_signal_name(code)}" if code < 0 or code > 128
                else f"node agent exited with {code}")
            failures.append(RootCause(f"node {node_rank}", code if code > 0 else 128 - code,
                                      msg, None, float(result.get("ended") or float("inf"))))
    summary = _conclude(outcomes, failures, ranks, world_size)
    summary.faults = [fault_line(f) for f in run.faults()]
    return summary


def fault_line(entry: dict) -> str:
    """One recorded ``fi-dist chaos`` fault for the summary."""
    when = time.strftime("%H:%M:%S", time.localtime(float(entry.get("time", 0))))
    return (f"{when} node {entry.get('node')}: {entry.get('fault')} -> {entry.get('now')} "
            f"(attempt {entry.get('attempt')}, {entry.get('mechanism')})")


def summarize_ranks(run: RunDir, nproc_per_node: int, rank_exits: dict[int, int | None],
                    seen: dict[int, float], lost: set[int] | frozenset[int] = frozenset(),
                    notes: dict[int, str] | None = None) -> Summary:
    """A :class:`Summary` for launchers whose units are ranks (Ray actors).

    Args:
        rank_exits: each rank's exit code (None: never reported).
        seen: when the launcher saw each rank end (wall clock), for ranks that did not
            record their own failure time.
        lost: ranks whose host vanished with them (a lost Ray node). They died before
            the launcher could notice, and before their peers failed on the closed
            connections: their last sign of life (the rank file's last write) orders them.
        notes: why the launcher ended a rank (its node's idle culler), by rank.
    """
    ranks = run.ranks()
    outcomes: list[RankOutcome] = []
    failures: list[RootCause] = []
    for rank, code in sorted(rank_exits.items()):
        node = rank // nproc_per_node
        info = ranks.get(rank, {})
        if code is None:
            outcomes.append(RankOutcome(rank, node, None, "ended before reporting"))
            continue
        own = info.get("state") == "failed" and info.get("ended")
        message = info.get("error") or (f"killed by {_signal_name(code)}" if code > 128
                                        else f"exited {code}")
        if rank in lost:
            message = "its node was lost with it (treated as preempted)"
        elif notes and rank in notes:
            message = notes[rank]
        outcomes.append(RankOutcome(rank, node, code, message if code else ""))
        if code:
            when = float(info["ended"]) if own else seen.get(rank, float("inf"))
            if rank in lost:
                # A vanished host is never a consequence of a peer's error; without a rank
                # file to date it (a remote Ray node's), it goes first.
                when = float(info.get("updated") or 0.0)
            failures.append(RootCause(f"rank {rank} (node {node})", code, message, None, when))
    for p in run.preemptions():
        failures.append(RootCause(f"node {p['node']}", 143,
                                  "preempted (SIGTERM to every process of the node)",
                                  None, float(p["time"])))
    failures += _hang_causes(run)
    return _conclude(outcomes, failures, ranks, len(rank_exits))


STUCK_COLLECTIVE = "stuck collective"
"""A collective that raised: the root cause only of a job that failed."""


def _hang_causes(run: RunDir) -> list[RootCause]:
    """The hang watch's capture (fi_dist.hang.watch), timed when the job stopped progressing
    or when its first collective raised: before the ranks' consequent failures."""
    rec = run.hang_report()
    if not rec:
        return []
    label = "job hung" if rec.get("ends_job") else STUCK_COLLECTIVE
    diagnosis = (rec.get("diagnosis") or {}).get("text") or ""
    return [RootCause(label, int(rec.get("exitcode") or 1), f"{rec.get('trigger')}; {diagnosis}",
                      rec.get("text"), float(rec.get("time") or 0))]


def _conclude(outcomes: list[RankOutcome], failures: list[RootCause],
              ranks: dict[int, dict], world_size: int) -> Summary:
    if (all(c.label == STUCK_COLLECTIVE for c in failures)
            and not any(o.exitcode for o in outcomes)):
        failures = []  # the script caught the collective's error and every rank ended well
    if not failures:
        bad = [o.exitcode for o in outcomes if o.exitcode]
        return Summary(outcomes, None, bad[0] if bad else 0)
    root = min(failures, key=lambda c: c.timestamp)
    exitcode = root.exitcode if root.exitcode > 0 else 128 - root.exitcode
    saved = {info.get("checkpoint_step") for info in ranks.values()}
    # Only when EVERY rank reported the same committed step is the preemption clean.
    ckpt = saved.pop() if len(saved) == 1 and len(ranks) == world_size else None
    return Summary(outcomes, root, exitcode, ckpt)


def format_summary(summary: Summary) -> str:
    lines = []
    n_ok = sum(1 for o in summary.outcomes if o.exitcode == 0)
    verdict = "succeeded" if summary.ok else "FAILED"
    lines.append(f"fi-dist: job {verdict}: {n_ok}/{len(summary.outcomes)} ranks exited 0")
    for o in summary.outcomes:
        code = "-" if o.exitcode is None else str(o.exitcode)
        extra = f"  {o.detail}" if o.detail else ""
        lines.append(f"  rank {o.rank} (node {o.node}): exit {code}{extra}")
    if summary.root_cause:
        rc = summary.root_cause
        lines.append(f"root cause (first failure): {rc.label}: exit {rc.exitcode}: {rc.message}")
        if summary.checkpoint_step is not None:
            lines.append(f"preempted cleanly: every rank committed the checkpoint of step "
                         f"{summary.checkpoint_step}; a restart resumes there")
        if rc.traceback:
            lines.append(_user_frames(rc.traceback))
    if summary.faults:
        lines.append("network faults injected (fi-dist chaos):")
        lines += [f"  {f}" for f in summary.faults]
    return "\n".join(lines)


def _user_frames(tb: str) -> str:
    """Drop fi-dist's own launch frames (rank_main, runpy) so the user's code leads."""
    out: list[str] = []
    skip_source = False
    for line in tb.rstrip().splitlines():
        if line.startswith("  File "):
            skip_source = "fi_dist/runtime/rank_main.py" in line or "<frozen runpy>" in line
            if skip_source:
                continue
        elif skip_source and line.startswith("    "):
            continue
        else:
            skip_source = False
        out.append(line)
    return "\n".join(out)
