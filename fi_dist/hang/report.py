"""A stacks report: the collected ranks, merged, with the diagnosis; as text and as JSON.

What ``fi-dist stacks`` prints, what the supervisor writes into the run directory when
a job hangs and what the idle culler sends with its ``hung`` notification.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fi_dist.hang.diagnose import Diagnosis, diagnose
from fi_dist.hang.ledger import SlotSnapshot
from fi_dist.hang.stacks import (
    Frame,
    RankDump,
    StackGroup,
    ThreadStack,
    merge,
    rank_ranges,
    ranks_word,
    render_tree,
)


@dataclass
class Report:
    """Every rank's stack and collectives at one moment, merged and diagnosed."""

    run_id: str
    dumps: list[RankDump]
    all_threads: bool = False
    taken: float = field(default_factory=time.time)
    """When the stacks were collected (wall clock)."""
    elapsed: float = 0.0
    """Seconds the collection took."""

    @property
    def groups(self) -> list[StackGroup]:
        return merge(self.dumps, self.all_threads)

    @property
    def diagnosis(self) -> Diagnosis:
        return diagnose(self.dumps)

    @property
    def nodes(self) -> dict[int, int]:
        return {d.rank: d.node for d in self.dumps}

    def summary_lines(self) -> list[str]:
        """One line per group of ranks with one identical stack."""
        out = []
        for g in self.groups:
            label = g.label(self.nodes)
            if self.all_threads and g.frames:
                names = sorted(set(g.threads))
                label += f" [{', '.join(names[:3])}{', ...' if len(names) > 3 else ''}]"
            out.append(f"{label}: {g.text}")
        return out

    def collective_lines(self) -> list[str]:
        """Per process group: which ranks are in which collective, and since when."""
        by_group: dict[tuple[int, str], dict[str, tuple[list[int], list[float]]]] = {}
        for d in self.dumps:
            for s in d.slots:
                text, waited = _slot_state(s, self.taken)
                ranks, times = by_group.setdefault((s.kind != "python", s.group), {}).setdefault(
                    text, ([], []))
                ranks.append(d.rank)
                if waited is not None:
                    times.append(waited)
        out = []
        for (fr, group), states in sorted(by_group.items()):
            parts = []
            for text, (ranks, times) in sorted(states.items(), key=lambda kv: min(kv[1][0])):
                span = ""
                if times:
                    lo, hi = min(times), max(times)
                    span = (f" for {hi:.1f}s" if f"{lo:.1f}" == f"{hi:.1f}"
                            else f" for {lo:.1f}-{hi:.1f}s")
                parts.append(f"{ranks_word(ranks)} {text}{span}")
            src = " [Flight Recorder]" if fr else ""
            out.append(f"  {group}{src}: " + "; ".join(parts))
        return out

    def text(self) -> str:
        """The human report: groups, the call tree, the collectives, the diagnosis last."""
        n_nodes = len({d.node for d in self.dumps})
        what = "every thread" if self.all_threads else "main thread of each rank"
        lines = [f"fi-dist stacks: run {self.run_id}: {len(self.dumps)} ranks on {n_nodes} "
                 f"node{'s' if n_nodes != 1 else ''} ({what}; collected in "
                 f"{self.elapsed:.2f}s)"]
        lines += self.summary_lines()
        tree = render_tree(self.dumps)
        if tree:
            lines += ["", "parallel stacks (main threads, outermost first; * where ranks "
                      "part ways):", *tree]
        notes = [f"  rank {d.rank}: {d.note}" for d in self.dumps if d.note and d.threads]
        if notes:
            lines += ["", "notes:", *notes]
        coll = self.collective_lines()
        if coll:
            lines += ["", "collectives (per process group; #N = the N-th on that group):",
                      *coll]
        lines += ["", f"diagnosis: {self.diagnosis.text}"]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "taken": self.taken, "elapsed": self.elapsed,
                "all_threads": self.all_threads,
                "groups": [{**g.to_json(), "label": g.label(self.nodes)} for g in self.groups],
                "ranks": [d.to_json() for d in sorted(self.dumps, key=lambda d: d.rank)],
                "diagnosis": self.diagnosis.to_json()}


def _slot_state(s: SlotSnapshot, now: float) -> tuple[str, float | None]:
    if s.in_flight:
        at = f" at {s.site}" if s.site else ""
        verb = "failed in" if s.failed else "in"
        return f"{verb} {s.op} #{s.issued}{at}", (max(0.0, now - s.issued_at)
                                                  if s.issued_at else None)
    return f"completed #{s.completed}" + (f" (last {s.op})" if s.op else ""), None


def dumps_from_json(data: dict[str, Any]) -> list[RankDump]:
    """The ranks of a JSON report (an in-pod collector's answer) as :class:`RankDump` s."""
    out = []
    for r in data.get("ranks") or []:
        threads = [ThreadStack(t["name"], int(t.get("ident") or 0), bool(t.get("main")),
                               tuple(Frame(f["file"], int(f["line"]), f["func"])
                                     for f in t.get("frames") or []))
                   for t in r.get("threads") or []]
        slots = [SlotSnapshot(group=c["group"], kind=c["source"], issued=c["issued"],
                              completed=c["completed"], op=c["op"], file=c["file"],
                              line=c["line"], func=c["func"], issued_at=c["issued_at"],
                              completed_at=c["completed_at"], failed=c["failed"],
                              error=c["error"])
                 for c in r.get("collectives") or []]
        out.append(RankDump(r["rank"], r["node"], r.get("pid", 0), r.get("state", "?"),
                            r.get("source", ""), threads, slots, r.get("note", ""),
                            r.get("flight_recorder")))
    return out


__all__ = ["Report", "dumps_from_json", "rank_ranges"]
