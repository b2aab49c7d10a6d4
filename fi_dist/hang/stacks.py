"""Every rank's stack, merged DDT-style: ranks grouped by identical stack.

Pure data and functions (no I/O): :class:`RankDump` is what was collected from one
rank (its threads' stacks and its ledger), :func:`merge` groups ranks whose main
thread (or, with ``all_threads``, any thread) has the same stack, and
:func:`render_tree` draws the main threads as one call tree (Linaro DDT's *parallel
stacks*) where a ``*`` marks the frames where ranks part ways.

A group's one-line summary names the innermost frame and the innermost frame of the
user's code around it: ``all_reduce <- train.py:40 in step`` (a rank waiting in a
collective called at train.py:40) or ``load_batch (train.py:22) <- train.py:50 in
step`` (a rank in the user's own function).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fi_dist.hang.ledger import SlotSnapshot

_HIDDEN = ("/fi_dist/runtime/", "<frozen runpy>", "/runpy.py", "/debugpy/", "/pydevd",
           "/_pydevd_bundle/", "/_pydev_bundle/")
"""Frames that are fi-dist's (or the debugger's) own, never the user's: not shown."""
_LIBRARY = ("/site-packages/", "/dist-packages/", "/lib/python3", "<")


@dataclass(frozen=True)
class Frame:
    """One frame: file, line, function."""

    file: str
    line: int
    func: str

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.file)}:{self.line}"

    @property
    def library(self) -> bool:
        """Code of a library or of Python itself, not the user's."""
        return any(m in self.file for m in _LIBRARY)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "func": self.func}


def visible(frames: Iterable[Frame]) -> tuple[Frame, ...]:
    """``frames`` without fi-dist's own launch and bookkeeping frames (and pydevd's)."""
    return tuple(f for f in frames if not any(h in f.file for h in _HIDDEN))


@dataclass
class ThreadStack:
    """One thread of one rank, frames outermost first."""

    name: str
    ident: int
    main: bool
    frames: tuple[Frame, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ident": self.ident, "main": self.main,
                "frames": [f.to_json() for f in self.frames]}


@dataclass
class RankDump:
    """What was collected from one rank."""

    rank: int
    node: int
    pid: int = 0
    state: str = "running"
    """``running``, ``exited 0``, ``failed (exit 1)``, ``gone`` (its process vanished)."""
    source: str = ""
    """Where the stacks came from: ``python`` (the dump thread), ``faulthandler``, or
    empty (none: see ``note``)."""
    threads: list[ThreadStack] = field(default_factory=list)
    slots: list[SlotSnapshot] = field(default_factory=list)
    """The rank's ledger: per process group, collectives issued and completed."""
    note: str = ""
    """Why there is no stack, or what limited it."""
    flight_recorder: dict[str, Any] | None = None
    """The Flight Recorder's active entries, when the rank had it on."""

    @property
    def main(self) -> ThreadStack | None:
        return next((t for t in self.threads if t.main), None)

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "node": self.node, "pid": self.pid, "state": self.state,
                "source": self.source, "note": self.note,
                "threads": [t.to_json() for t in self.threads],
                "collectives": [slot_json(s) for s in self.slots],
                "flight_recorder": self.flight_recorder}


def slot_json(s: SlotSnapshot) -> dict[str, Any]:
    return {"group": s.group, "source": s.kind, "issued": s.issued, "completed": s.completed,
            "in_flight": s.in_flight, "op": s.op, "file": s.file, "line": s.line,
            "func": s.func, "issued_at": s.issued_at, "completed_at": s.completed_at,
            "failed": s.failed, "error": s.error}


# --- rank sets ---------------------------------------------------------------------------
def rank_ranges(ranks: Iterable[int]) -> str:
    """``0-2,4-15`` for {0, 1, 2, 4, ..., 15}."""
    rs = sorted(set(ranks))
    parts: list[str] = []
    i = 0
    while i < len(rs):
        j = i
        while j + 1 < len(rs) and rs[j + 1] == rs[j] + 1:
            j += 1
        parts.append(str(rs[i]) if i == j else f"{rs[i]}-{rs[j]}")
        i = j + 1
    return ",".join(parts)


def rank_label(ranks: Iterable[int], nodes: dict[int, int] | None = None) -> str:
    """``rank 3 (node 0)`` or ``ranks 0-2,4-15 (15)``."""
    rs = sorted(set(ranks))
    if len(rs) == 1:
        node = (nodes or {}).get(rs[0])
        return f"rank {rs[0]}" + (f" (node {node})" if node is not None else "")
    return f"ranks {rank_ranges(rs)} ({len(rs)})"


def ranks_word(ranks: Iterable[int]) -> str:
    """``rank 3`` / ``ranks 0-2`` (no count)."""
    rs = sorted(set(ranks))
    return f"rank {rs[0]}" if len(rs) == 1 else f"ranks {rank_ranges(rs)}"


# --- summaries ---------------------------------------------------------------------------
def innermost_user(frames: tuple[Frame, ...], skip_last: bool = False) -> Frame | None:
    """The innermost frame of the user's code (optionally not the innermost frame itself)."""
    stack = frames[:-1] if skip_last else frames
    return next((f for f in reversed(stack) if not f.library), None)


def where_text(frames: tuple[Frame, ...]) -> str:
    """``train.py:22 in load_batch``: where the user's code is (its innermost frame)."""
    user = innermost_user(frames) or (frames[-1] if frames else None)
    return f"{user.where} in {user.func}" if user else "?"


def summary(frames: tuple[Frame, ...]) -> str:
    """One line for a stack: ``all_reduce <- train.py:40 in step``."""
    if not frames:
        return "no Python frame"
    inner = frames[-1]
    head = inner.func if inner.library else f"{inner.func} ({inner.where})"
    caller = innermost_user(frames, skip_last=True)
    return f"{head} <- {caller.where} in {caller.func}" if caller else head


@dataclass
class StackGroup:
    """Ranks (or rank threads) with one identical stack."""

    ranks: list[int]
    threads: list[str]
    """The thread names in the group (main threads: ``MainThread``)."""
    frames: tuple[Frame, ...]
    text: str
    """The one-line summary (or why there is no stack)."""

    def label(self, nodes: dict[int, int]) -> str:
        return rank_label(self.ranks, nodes)

    def to_json(self) -> dict[str, Any]:
        return {"ranks": self.ranks, "threads": sorted(set(self.threads)), "summary": self.text,
                "frames": [f.to_json() for f in self.frames]}


def merge(dumps: list[RankDump], all_threads: bool = False) -> list[StackGroup]:
    """Group ranks by identical (visible) stack; ranks without one by why not."""
    keyed: dict[tuple[Any, ...], StackGroup] = {}
    for d in sorted(dumps, key=lambda d: d.rank):
        threads = d.threads if all_threads else [t for t in d.threads if t.main]
        if not threads:
            why = d.note or d.state
            key: tuple[Any, ...] = ("none", why)
            group = keyed.setdefault(key, StackGroup([], [], (), f"no stack: {why}"))
            group.ranks.append(d.rank)
            continue
        for t in threads:
            frames = visible(t.frames)
            name = t.name if all_threads else "MainThread"
            key = ("stack", name if all_threads else "", frames)
            group = keyed.setdefault(key, StackGroup([], [], frames, summary(frames)))
            if d.rank not in group.ranks:
                group.ranks.append(d.rank)
            group.threads.append(t.name)
    return sorted(keyed.values(), key=lambda g: (not g.frames, g.ranks[0], g.threads[:1]))


# --- the call tree ------------------------------------------------------------------------
@dataclass
class _Node:
    frame: Frame | None
    ranks: set[int] = field(default_factory=set)
    children: dict[Frame, _Node] = field(default_factory=dict)


def render_tree(dumps: list[RankDump]) -> list[str]:
    """The main threads as one call tree, outermost first; ``*`` where ranks part ways."""
    root = _Node(None)
    for d in sorted(dumps, key=lambda d: d.rank):
        main = d.main
        if main is None:
            continue
        node = root
        node.ranks.add(d.rank)
        for f in visible(main.frames):
            node = node.children.setdefault(f, _Node(f))
            node.ranks.add(d.rank)
    if not root.children:
        return []
    width = max(len(ranks_word(n.ranks)) for n in _walk(root)) + 2
    out: list[str] = []

    def emit(node: _Node, depth: int) -> None:
        branch = len(node.children) > 1 or any(c.ranks != node.ranks
                                                for c in node.children.values())
        for child in node.children.values():
            f = child.frame
            assert f is not None
            mark = "*" if branch else " "
            indent = "  " * (depth + (1 if branch else 0))
            out.append(f"{mark} {ranks_word(child.ranks):<{width}}{indent}{f.func:<20} "
                       f"{f.where}")
            emit(child, depth + (1 if branch else 0))

    emit(root, 0)
    return out


def _walk(node: _Node) -> Iterable[_Node]:
    for child in node.children.values():
        yield child
        yield from _walk(child)
