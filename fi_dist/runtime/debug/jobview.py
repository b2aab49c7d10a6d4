"""What the IDE sees of the job as a whole: the Ranks view, the root session, blocked notes.

The hub owns one :class:`JobView`. It turns every rank's break-all state
(:func:`fi_dist.runtime.debug.breakall.view`) and state line into:

* the ``fiDist/ranks`` DAP event on the root session (and the answer to the
  ``fiDist/ranks`` request): one row per rank, in rank order, for the fi-dist VSCode
  extension's **Ranks** view;
* the root session's one thread (``ROOT_THREAD``, named ``fi-dist: 4 ranks: 3 paused,
  1 blocked``): ``stopped`` while some rank is stopped, ``continued`` once none is, so
  the root row of VSCode's CALL STACK says PAUSED or RUNNING like the job (it never
  takes the focus: ``preserveFocusHint``);
* one DAP ``important`` output (VSCode shows it as a notification) to the focused
  session when ranks are blocked in a collective after a break-all, gathered over
  ``BLOCKED_GATHER`` seconds so four blocked ranks make one notice, not four.

The focused rank is the one the IDE says it looks at (the extension sends
``fiDist/focus``), else the rank whose stop started the break-all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fi_dist.runtime.debug import breakall

if TYPE_CHECKING:
    from fi_dist.runtime.debug.hub import Hub
    from fi_dist.runtime.debug.ide import IdeSession

log = logging.getLogger("fi_dist.debug.hub")

ROOT_THREAD = 1
"""The root session's one thread id: the job as a whole."""
PUBLISH_AFTER = 0.05
"""Seconds a change waits for others before the Ranks view is updated (one event)."""
BLOCKED_GATHER = 0.4
"""Seconds blocked ranks are gathered into one notice."""


class JobView:
    """The job as the IDE sees it; only the hub calls it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.focus: int | None = None
        """The rank whose session the IDE shows (the extension says so)."""
        self.origin: int | None = None
        """The rank whose stop started the current break-all."""
        self._root_stopped = False
        self._publish: asyncio.TimerHandle | None = None
        self._blocked: dict[int, str] = {}
        self._blocked_flush: asyncio.TimerHandle | None = None

    # --- the Ranks view ------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        """One row per rank, in rank order."""
        rows = []
        for r in sorted(self.hub.ranks):
            link = self.hub.ranks[r]
            child = link.child
            rows.append({"rank": r, "node": link.node, "pid": link.pid,
                         "state": breakall.view(link.machine).value, "text": link.note,
                         "session": bool(child is not None and child.configured)})
        return rows

    def body(self) -> dict[str, Any]:
        """The ``fiDist/ranks`` event and response body."""
        machines = {r: link.machine for r, link in self.hub.ranks.items()}
        return {"ranks": self.rows(), "summary": breakall.job_summary(machines),
                "focus": self.focused_rank(), "stopped": breakall.job_stopped(machines)}

    def changed(self) -> None:
        """Something a row shows changed: publish soon (changes close together: once)."""
        if self._publish is None:
            loop = asyncio.get_running_loop()
            self._publish = loop.call_later(PUBLISH_AFTER, self.publish)

    def publish(self) -> None:
        self._publish = None
        root = self.hub.root
        if root is None or not root.configured:
            self._root_stopped = False
            return
        body = self.body()
        root.event("fiDist/ranks", body)
        if body["stopped"] and not self._root_stopped:
            root.event("stopped", {"reason": "pause", "threadId": ROOT_THREAD,
                                   "description": "fi-dist: the job is paused",
                                   "allThreadsStopped": True, "preserveFocusHint": True})
        elif not body["stopped"] and self._root_stopped:
            root.event("continued", {"threadId": ROOT_THREAD, "allThreadsContinued": True})
        self._root_stopped = body["stopped"]

    def root_threads(self) -> list[dict[str, Any]]:
        """The root session's answer to ``threads``: the job as one thread."""
        machines = {r: link.machine for r, link in self.hub.ranks.items()}
        return [{"id": ROOT_THREAD, "name": f"fi-dist: {breakall.job_summary(machines)}"}]

    # --- focus ---------------------------------------------------------------------------
    def set_focus(self, rank: int | None) -> None:
        """The IDE looks at ``rank``'s session now (None: at no rank's)."""
        self.focus = rank if rank in self.hub.ranks else None

    def break_all_from(self, rank: int) -> None:
        """Rank ``rank`` stopped first: a new break-all."""
        self.origin = rank

    def focused_rank(self) -> int | None:
        for r in (self.focus, self.origin):
            if r is not None and (link := self.hub.ranks.get(r)) is not None and \
                    link.state is not breakall.RankState.EXITED:
                return r
        return None

    def focused_session(self) -> IdeSession | None:
        """The session notices go to: the focused rank's child view, else the root."""
        r = self.focused_rank()
        link = self.hub.ranks.get(r) if r is not None else None
        if link is not None and link.child is not None and link.child.configured:
            return link.child
        return self.hub.root

    # --- ranks blocked in a collective ----------------------------------------------------
    def blocked(self, rank: int, summary: str) -> None:
        """Rank ``rank`` did not stop for its pause (``blocked in collective ...``)."""
        self._blocked[rank] = summary
        if self._blocked_flush is None:
            loop = asyncio.get_running_loop()
            self._blocked_flush = loop.call_later(BLOCKED_GATHER, self._flush_blocked)

    def _flush_blocked(self) -> None:
        self._blocked_flush = None
        blocked, self._blocked = self._blocked, {}
        still = {r: s for r, s in blocked.items()
                 if (link := self.hub.ranks.get(r)) is not None
                 and link.state is breakall.RankState.BLOCKED}
        session = self.focused_session()
        if not still or session is None:
            return
        session.event("output", {"category": "important", "output": blocked_note(
            {r: (self.hub.ranks[r].label, s) for r, s in still.items()})})


def blocked_note(blocked: dict[int, tuple[str, str]]) -> str:
    """One notice for ranks blocked after a break-all: ``{rank: (label, summary)}``."""
    labels = [blocked[r][0] for r in sorted(blocked)]
    summaries = {s for _, s in blocked.values()}
    if len(summaries) == 1:
        who = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
        verb = "is" if len(labels) == 1 else "are"
        what = f"{who} {verb} {summaries.pop()}"
    else:
        what = "; ".join(f"{blocked[r][0]} is {blocked[r][1]}" for r in sorted(blocked))
    return (f"fi-dist: {what}, waiting for a stopped rank: not paused yet. Each stops as "
            "soon as its call returns to Python; continue to let the job go on.\n")
