"""Which rank is behind, or which collectives disagree: one line from every rank's ledger.

A pure function of the collected :class:`~fi_dist.hang.stacks.RankDump` list. Per
process group (fi-dist's ledger first, then the Flight Recorder's C++-side counts):

1. **mismatch**: ranks wait in the same collective number with different ops
   (``ranks disagree: 0-1 in all_reduce #12 at t.py:40, 2-3 in broadcast #12 at
   t.py:44 (mismatched collectives)``);
2. **behind**: some ranks wait in collective #N while others have not issued it
   (``rank 3 is behind: ranks 0-2 wait in all_reduce #412 (train.py:40 in step); rank 3
   completed #411 and is at dataloader.py:88 in __iter__``);
3. **all waiting**: every rank of the group waits in the same collective (none is
   behind on it: the collective itself does not finish);
4. otherwise nobody waits in a collective (a failed rank is named if there is one).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from fi_dist.hang.ledger import SlotSnapshot
from fi_dist.hang.stacks import RankDump, rank_ranges, ranks_word, where_text

PYTHON, FLIGHT = "python", "flight recorder"


@dataclass
class Diagnosis:
    """The verdict and the facts behind it."""

    kind: str
    """``behind``, ``mismatch``, ``all_waiting``, ``failed`` or ``none``."""
    text: str
    group: str = ""
    source: str = ""
    """``python`` (fi-dist's ledger) or ``flight recorder``."""
    seq: int = 0
    op: str = ""
    waiting: list[int] = field(default_factory=list)
    behind: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "group": self.group, "source": self.source,
                "seq": self.seq, "op": self.op, "waiting": self.waiting, "behind": self.behind}


def _groups(dumps: list[RankDump], source: str) -> list[tuple[str, dict[int, SlotSnapshot]]]:
    found: dict[str, dict[int, SlotSnapshot]] = defaultdict(dict)
    for d in dumps:
        for s in d.slots:
            if s.kind == source:
                found[s.group][d.rank] = s
    return sorted(found.items(), key=lambda kv: (not _is_default(kv[0]), kv[0]))


def _is_default(group: str) -> bool:
    return group in ("default", "0") or group.startswith("0:")


def _members(group: str, slots: dict[int, SlotSnapshot], dumps: list[RankDump]) -> list[int]:
    # Every rank belongs to the default group; of the others we know the ranks that used it.
    return sorted({d.rank for d in dumps} if _is_default(group) else set(slots))


def _op(s: SlotSnapshot, source: str) -> str:
    return s.op or "collective"


def _site(s: SlotSnapshot, source: str) -> str:
    if source == FLIGHT:
        return "issued from C++, e.g. DDP's gradient all-reduce; Flight Recorder"
    return s.site or "?"


def _on(group: str) -> str:
    return "" if _is_default(group) else f" on group {group}"


def _mismatch(group: str, slots: dict[int, SlotSnapshot], source: str) -> Diagnosis | None:
    by_seq: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for r, s in slots.items():
        if s.in_flight:
            by_seq[s.issued][_op(s, source)].append(r)
    for seq, ops in sorted(by_seq.items()):
        if len(ops) < 2:
            continue
        parts = []
        for op, ranks in sorted(ops.items(), key=lambda kv: min(kv[1])):
            site = slots[min(ranks)].site if source == PYTHON else ""
            parts.append(f"{rank_ranges(ranks)} in {op} #{seq}" + (f" at {site}" if site else ""))
        text = f"ranks disagree{_on(group)}: {', '.join(parts)} (mismatched collectives)"
        return Diagnosis("mismatch", text, group, source, seq, "/".join(sorted(ops)),
                         waiting=sorted(r for rs in ops.values() for r in rs))
    return None


def _elsewhere(rank: int, dump: RankDump | None, group: str, source: str) -> str:
    """What a rank that is behind on ``group`` does instead."""
    if dump is None:
        return "sent no stack"
    if dump.state != "running":
        return f"then {dump.state}" if dump.state.startswith(("exited", "failed")) else dump.state
    other = next((s for s in dump.slots if s.in_flight and s.group != group
                  and s.kind == PYTHON), None)
    if other is not None:
        return (f"waits in {other.op} #{other.issued}{_on(other.group)}"
                + (f" ({other.site})" if other.site else ""))
    main = dump.main
    if main is not None and main.frames:
        from fi_dist.hang.stacks import visible

        return f"is at {where_text(visible(main.frames))}"
    return "is not answering" if not dump.note else f"has no stack ({dump.note})"


def _behind(group: str, slots: dict[int, SlotSnapshot], members: list[int],
            dumps: dict[int, RankDump], source: str) -> Diagnosis | None:
    issued = {r: slots[r].issued if r in slots else 0 for r in members}
    top = max(issued.values(), default=0)
    waiting = [r for r in members if r in slots and slots[r].in_flight and issued[r] == top]
    behind = [r for r in members if issued[r] < top]
    if not waiting or not behind:
        return None
    first = slots[waiting[0]]
    op = _op(first, source)
    failed = all(slots[r].failed for r in waiting)
    verb = "failed in" if failed else ("waits in" if len(waiting) == 1 else "wait in")
    head = (f"{ranks_word(behind)} {'is' if len(behind) == 1 else 'are'} behind{_on(group)}: "
            f"{ranks_word(waiting)} {verb} {op} #{top} ({_site(first, source)})")
    details: dict[str, list[int]] = defaultdict(list)
    for r in behind:
        s = slots.get(r)
        done = s.completed if s is not None else 0
        if s is not None and s.in_flight:
            what = f"waits in {_op(s, source)} #{s.issued}"
        else:
            what = _elsewhere(r, dumps.get(r), group, source)
        details[f"completed #{done} and {what}"].append(r)
    tail = "; ".join(f"{ranks_word(rs)} {what}" for what, rs in details.items())
    return Diagnosis("behind", f"{head}; {tail}", group, source, top, op, waiting, behind)


def _all_waiting(group: str, slots: dict[int, SlotSnapshot], members: list[int],
                 source: str) -> Diagnosis | None:
    if not members or not all(r in slots and slots[r].in_flight for r in members):
        return None
    seqs = {slots[r].issued for r in members}
    if len(seqs) != 1:
        return None
    first = slots[members[0]]
    seq, op = seqs.pop(), _op(first, source)
    text = (f"every rank{_on(group)} waits in {op} #{seq} ({_site(first, source)}); none is "
            "behind on it: the collective itself does not finish (a peer's device or link, "
            "or a collective on another group it depends on)")
    return Diagnosis("all_waiting", text, group, source, seq, op, waiting=list(members))


def diagnose(dumps: list[RankDump]) -> Diagnosis:
    """The one-line diagnosis of the collected ranks."""
    by_rank = {d.rank: d for d in dumps}
    tables = [(source, group, slots) for source in (PYTHON, FLIGHT)
              for group, slots in _groups(dumps, source)]
    for source, group, slots in tables:
        if (found := _mismatch(group, slots, source)) is not None:
            return found
    for source, group, slots in tables:
        found = _behind(group, slots, _members(group, slots, dumps), by_rank, source)
        if found is not None:
            return found
    for source, group, slots in tables:
        if (found := _all_waiting(group, slots, _members(group, slots, dumps), source)):
            return found
    dead = [d for d in dumps if d.state.startswith("failed") or d.state == "gone"]
    if dead:
        return Diagnosis("failed", "; ".join(f"rank {d.rank} {d.state}" for d in dead)
                         + "; no rank waits in a collective")
    done = {s.completed for d in dumps for s in d.slots if s.kind == PYTHON
            and _is_default(s.group)}
    tail = f" (every rank completed #{done.pop()})" if len(done) == 1 else ""
    return Diagnosis("none", f"no rank waits in a collective{tail}")
