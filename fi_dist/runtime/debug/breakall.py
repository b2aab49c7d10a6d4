"""Break-all as a state machine: what the hub does for each rank, as pure functions.

:func:`step` takes one rank's :class:`Rank` and one event and returns the rank's next
:class:`Rank` and the actions the hub's I/O must take, in order. Nothing here reads a
clock or touches a socket: time comes in the events, timers go out as :class:`After`
actions whose event the hub feeds back when they fire. :func:`pause_targets`,
:func:`continue_targets` and :func:`forwards_continue` are the job-level decisions
over every rank's state. The hub (:mod:`fi_dist.runtime.debug.hub`) only turns DAP
messages and agent lines into events and executes actions; the tables in
``tests/unit/test_breakall.py`` pin every transition it takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

BLOCKED_AFTER = 0.3
"""Seconds a paused rank may keep running before the hub calls it blocked."""
PAUSE_RETRY_MAX = 5.0
"""Longest wait between re-sent pauses to a rank that has not stopped yet."""
RECORD_STOP_AFTER = 0.3
"""Seconds after a stop before the hub asks the rank where it stopped (for status).

Asked once the break-all fan-out is over: one more round trip per rank through its
adapter, which competed with the fan-out when asked at once."""
UNPAUSE_WINDOW = 5.0
"""Seconds after a cancelled pause during which a stop "by pause" is that pause, late."""


class RankState(StrEnum):
    """Where one rank is in a break-all, as the hub sees it.

    ::

        RUNNING --Stopped-----------------> STOPPED  the first stop pauses the others
        RUNNING --Pause (not held)--------> PAUSING  in-process pause through the agent,
                                                     or owed until its session is configured
        PAUSING --Stopped-----------------> STOPPED
        PAUSING --PauseOverdue, Blocked---> BLOCKED  no stop BLOCKED_AFTER after the pause:
                                                     native code (a collective); the pause
                                                     stays pending and is re-sent with backoff
        BLOCKED --Stopped-----------------> STOPPED  the collective returned
        PAUSING/BLOCKED --Continue, Hold--> RUNNING  pause taken back in-process; if it lands
                                                     within UNPAUSE_WINDOW the stop is dropped
        STOPPED --Continue, Continued-----> RUNNING
        STOPPED --Stopped-----------------> STOPPED  a step ended (counts as a first stop)
        PAUSING/BLOCKED/STOPPED --ClientGone--> RUNNING  the DAP disconnect resumes it (a
                                                     pause landing late is dropped too)
        any --RankGone--------------------> EXITED   absorbing: later events change nothing
        any --PostMortem------------------> (same)   flag: its state line says post-mortem
                                                     until a continue or the client leaving

    Flags that survive a state live beside it in :class:`Rank` (held, pause owed, when
    a pause was cancelled, the epoch that makes old timers stale).
    """

    RUNNING = "running"
    PAUSING = "pausing"
    """A break-all pause is out (or owed); the rank has not stopped yet."""
    BLOCKED = "blocked"
    """Paused but not stopped after BLOCKED_AFTER: in native code, pause still pending."""
    STOPPED = "stopped"
    EXITED = "exited"


HALTED = frozenset({RankState.PAUSING, RankState.BLOCKED, RankState.STOPPED})
"""States a continue (or the client leaving) takes a rank out of."""
_PAUSED = frozenset({RankState.PAUSING, RankState.BLOCKED})

RUNNING_NOTE = "running"
"""The state line a rank shows once the job continues."""


@dataclass(frozen=True)
class Rank:
    """One rank's break-all state: the enum plus what must survive transitions."""

    state: RankState = RankState.RUNNING
    held: bool = False
    """On its way to, or waiting in, ``fi_dist.breakpoint()``: never paused."""
    owed: bool = False
    """A pause is owed: its session was not configured when the pause was due. Only
    ever set while PAUSING or BLOCKED."""
    cancelled_at: float | None = None
    """When a pause it never stopped for was taken back (monotonic seconds)."""
    epoch: int = 0
    """Bumped by every pause sent and every stop; timer events of older epochs are stale."""
    post_mortem: str | None = None
    """``post-mortem: ValueError`` while the rank stops (or is about to stop) on its own
    uncaught exception; the state line keeps saying so until the job continues."""


# --- events --------------------------------------------------------------------------
@dataclass(frozen=True)
class Stopped:
    """The rank's adapter sent ``stopped`` (breakpoint, exception, step, pause, ...)."""

    reason: str
    now: float


@dataclass(frozen=True)
class Continued:
    """The rank's adapter sent ``continued`` (its own continue, or a step started)."""


@dataclass(frozen=True)
class Pause:
    """Break-all reaches this rank (a peer stopped, or the client paused the job)."""

    live: bool
    """Its DAP session is configured (otherwise the pause is owed)."""


@dataclass(frozen=True)
class PauseOverdue:
    """Timer: the pause of ``epoch`` has not brought a stop yet (``attempt``-th check)."""

    epoch: int
    attempt: int


@dataclass(frozen=True)
class Blocked:
    """The agent's answer to :class:`AskStack`: the main thread sits in native code."""

    epoch: int
    summary: str
    """``blocked in collective <fn> at file:line``."""
    stack: str
    """The Python stack, one indented line per frame, innermost last."""


@dataclass(frozen=True)
class PauseFailed:
    """The agent could not pause in-process (pydevd did not mark the main thread)."""

    live: bool


@dataclass(frozen=True)
class Hold:
    """The rank is on its way to ``fi_dist.breakpoint()`` (or waits in one)."""

    now: float


@dataclass(frozen=True)
class Release:
    """The rank left ``fi_dist.breakpoint()``'s wait."""


@dataclass(frozen=True)
class Continue:
    """The job continues and this rank is one of :func:`continue_targets`."""

    now: float


@dataclass(frozen=True)
class Resume:
    """The job continues and this rank has nothing to resume (running, or the origin
    whose adapter got the client's own continue)."""


@dataclass(frozen=True)
class ChildPause:
    """The rank's child session sent its own ``pause`` (the stop it brings is not late)."""


@dataclass(frozen=True)
class SessionConfigured:
    """The rank's DAP session finished ``configurationDone`` and its attach answered."""


@dataclass(frozen=True)
class RecordStop:
    """Timer: RECORD_STOP_AFTER has passed since the stop of ``epoch``."""

    epoch: int


@dataclass(frozen=True)
class Located:
    """The rank's answer to :class:`AskWhere`: its top frame as ``file.py:line``."""

    epoch: int
    where: str


@dataclass(frozen=True)
class ClientGone:
    """The root IDE session closed: every rank resumes."""

    now: float


@dataclass(frozen=True)
class RankGone:
    """The rank's control link closed (the process exited or was killed)."""


@dataclass(frozen=True)
class PostMortem:
    """The rank raised and is about to stop at the raising frame (its agent says so)."""

    text: str
    """``post-mortem: ValueError``."""


Event = (Stopped | Continued | Pause | PauseOverdue | Blocked | PauseFailed | Hold | Release
         | Continue | Resume | ChildPause | SessionConfigured | RecordStop | Located
         | ClientGone | RankGone | PostMortem)


# --- actions -------------------------------------------------------------------------
class Do(StrEnum):
    """Actions without arguments."""

    PAUSE = "pause"
    """Pause in-process through the agent (one hop less than a DAP pause)."""
    DAP_PAUSE = "dap-pause"
    """DAP ``pause`` through the rank's adapter (when its session is live)."""
    DAP_CONTINUE = "dap-continue"
    """DAP ``continue`` of the stopped thread."""
    UNPAUSE = "unpause"
    """Take back, in-process, a pause the rank never stopped for (a DAP continue would
    be answered only once a thread resumes, stalling the rank's adapter)."""
    RESUMED = "resumed"
    """Tell the agent the job continued (releases ``fi_dist.breakpoint(rank=k)`` waiters)."""
    SHOW_STOP = "show-stop"
    """Keep the stopped event (a child view configured later gets it) and forward it."""
    DROP_STOP = "drop-stop"
    """A cancelled pause landed late: show nothing, pause nobody (the unpause resumes it)."""
    PAUSE_OTHERS = "pause-others"
    """Break-all: pause every rank :func:`pause_targets` names."""
    DETACH = "detach"
    """Close the rank's DAP session with ``disconnect`` (debugpy resumes it and drops its
    breakpoints) and warm a new one for the next client."""


@dataclass(frozen=True)
class Notify:
    """Write the rank's state line (``fi-dist status``) through its agent."""

    text: str


@dataclass(frozen=True)
class After:
    """Feed ``event`` back into :func:`step` for this rank after ``delay`` seconds."""

    delay: float
    event: Event


@dataclass(frozen=True)
class AskStack:
    """Ask the agent for its main thread's Python stack; the answer is :class:`Blocked`."""

    epoch: int


@dataclass(frozen=True)
class AskWhere:
    """Ask the adapter for the stopped thread's top frame; the answer is :class:`Located`."""

    epoch: int


@dataclass(frozen=True)
class ShowBlocked:
    """Tell the client (child and root sessions) and the log that the rank is blocked."""

    summary: str
    stack: str


@dataclass(frozen=True)
class Gone:
    """The rank exited: close its session, end its child view, tell the client."""

    was: RankState


Action = Do | Notify | After | AskStack | AskWhere | ShowBlocked | Gone


def retry_delay(attempt: int) -> float:
    """Wait after the ``attempt``-th overdue check before the next (doubling, capped)."""
    return min(BLOCKED_AFTER * 2 ** min(attempt + 1, 10), PAUSE_RETRY_MAX)


def _send_pause(rank: Rank) -> tuple[Rank, tuple[Action, ...]]:
    epoch = rank.epoch + 1
    return (replace(rank, state=RankState.PAUSING, owed=False, cancelled_at=None, epoch=epoch),
            (Do.PAUSE, After(BLOCKED_AFTER, PauseOverdue(epoch, 0))))


def step(rank: Rank, event: Event) -> tuple[Rank, tuple[Action, ...]]:
    """One rank's next state and the hub's actions for ``event``, in execution order."""
    s = rank.state
    if s is RankState.EXITED:
        return rank, ()
    match event:
        case Stopped(reason=reason, now=now):
            if (s is RankState.RUNNING and reason == "pause" and rank.cancelled_at is not None
                    and now - rank.cancelled_at < UNPAUSE_WINDOW):
                return replace(rank, cancelled_at=None), (Do.DROP_STOP,)
            # Held ranks got where they were going; an owed pause is moot.
            epoch = rank.epoch + 1
            after = After(RECORD_STOP_AFTER, RecordStop(epoch))
            # The fan-out goes out before the stop is shown: the client should not see
            # the first stop any earlier than the hub starts pausing the rest.
            first = (Do.PAUSE_OTHERS,) if s not in _PAUSED else ()
            return (Rank(RankState.STOPPED, epoch=epoch, post_mortem=rank.post_mortem),
                    (*first, after, Do.SHOW_STOP))
        case Continued():
            if s is RankState.STOPPED:
                return replace(rank, state=RankState.RUNNING), (Notify(RUNNING_NOTE),)
        case Pause(live=live):
            if s is RankState.RUNNING and not rank.held:
                if live:
                    return _send_pause(rank)
                # Its session is still configuring (configurationDone already let the rank
                # run): skipping it lost the pause for good, so it is owed.
                return replace(rank, state=RankState.PAUSING, owed=True), ()
        case PauseOverdue(epoch=epoch, attempt=attempt):
            if s in _PAUSED and epoch == rank.epoch:
                # Under load the agent may run late or the in-process suspend may not
                # take: the pause also goes through the adapter, re-sent until a stop.
                resend: tuple[Action, ...] = (
                    (Do.DAP_PAUSE, AskStack(epoch)) if attempt == 0 else (Do.PAUSE, Do.DAP_PAUSE))
                return rank, (*resend, After(retry_delay(attempt),
                                            PauseOverdue(epoch, attempt + 1)))
        case Blocked(epoch=epoch, summary=summary, stack=stack):
            if s is RankState.PAUSING and epoch == rank.epoch:
                return (replace(rank, state=RankState.BLOCKED),
                        (Notify(summary), ShowBlocked(summary, stack)))
        case PauseFailed(live=live):
            if s in _PAUSED:
                return (rank, (Do.DAP_PAUSE,)) if live else (replace(rank, owed=True), ())
        case Hold(now=now):
            if s in _PAUSED:
                # The pause went out before the rank said it is on its way to
                # fi_dist.breakpoint(): take it back (the rank reports its own state).
                return (replace(rank, state=RankState.RUNNING, held=True, owed=False,
                                cancelled_at=now), (Do.UNPAUSE,))
            return replace(rank, held=True), ()
        case Release():
            return replace(rank, held=False), ()
        case Continue(now=now):
            if s is RankState.STOPPED:
                return (replace(rank, state=RankState.RUNNING, post_mortem=None),
                        (Do.RESUMED, Do.DAP_CONTINUE, Notify(RUNNING_NOTE)))
            if s in _PAUSED:
                return (replace(rank, state=RankState.RUNNING, owed=False, cancelled_at=now),
                        (Do.RESUMED, Do.UNPAUSE, Notify(RUNNING_NOTE)))
            return rank, (Do.RESUMED,)
        case Resume():
            return replace(rank, owed=False), (Do.RESUMED,)
        case ChildPause():
            return replace(rank, cancelled_at=None), ()
        case SessionConfigured():
            if rank.owed:
                if s is RankState.PAUSING:
                    return _send_pause(rank)
                # Blocked: its pause watch keeps re-sending through agent and adapter.
                return replace(rank, owed=False), ()
        case RecordStop(epoch=epoch):
            if s is RankState.STOPPED and epoch == rank.epoch:
                return rank, (AskWhere(epoch),)
        case Located(epoch=epoch, where=where):
            if s is RankState.STOPPED and epoch == rank.epoch:
                # A post-mortem stop keeps saying what it is (fi-dist status, Ranks view).
                text = (f"{rank.post_mortem} at {where}" if rank.post_mortem
                        else f"paused at {where}")
                return rank, (Notify(text),)
        case ClientGone(now=now):
            if s in HALTED:
                # A pause still in flight may land before the disconnect resumes the
                # rank: that stop is the cancelled pause, not a stop to break all on.
                cancelled = now if s in _PAUSED else None
                return (replace(rank, state=RankState.RUNNING, owed=False,
                                cancelled_at=cancelled, post_mortem=None),
                        (Do.DETACH, Notify(RUNNING_NOTE), Do.RESUMED))
            return replace(rank, post_mortem=None), (Do.DETACH, Do.RESUMED)
        case RankGone():
            return replace(rank, state=RankState.EXITED, held=False, owed=False), (Gone(s),)
        case PostMortem(text=text):
            # Said before the stop it announces, or (another socket) just after it.
            return replace(rank, post_mortem=text), (Notify(text),)
    return rank, ()


# --- job-level decisions -------------------------------------------------------------
def pause_targets(ranks: Mapping[int, Rank], origin: int | None) -> list[int]:
    """Ranks a break-all pauses: running and not held, except ``origin`` (the first stop)."""
    return [r for r, m in ranks.items()
            if r != origin and m.state is RankState.RUNNING and not m.held]


def continue_targets(ranks: Mapping[int, Rank], origin: int | None) -> list[int]:
    """Ranks a continue resumes: every halted one except ``origin``, whose adapter got
    the client's own continue. Every other rank gets :class:`Resume`."""
    return [r for r, m in ranks.items() if r != origin and m.state in HALTED]


def forwards_continue(rank: Rank) -> bool:
    """Whether a child session's ``continue`` goes to its rank's adapter.

    Only a stopped rank's: pydevd answers a continue only once a thread has resumed, so
    sent to a rank that never stopped it stalls that rank's adapter. For any other rank
    the hub continues the job itself (``continue_targets(ranks, None)``).
    """
    return rank.state is RankState.STOPPED


class View(StrEnum):
    """What the IDE's Ranks view and the root session show for a rank (:func:`view`)."""

    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    BLOCKED = "blocked"
    WAITING = "waiting"
    """Held in ``fi_dist.breakpoint(rank=k)`` for another rank."""
    POST_MORTEM = "post-mortem"
    EXITED = "exited"


def view(rank: Rank) -> View:
    """The kind of state the IDE shows for ``rank`` (its text is the state line)."""
    if rank.state is RankState.EXITED:
        return View.EXITED
    if rank.post_mortem:
        return View.POST_MORTEM
    if rank.state is RankState.STOPPED:
        return View.PAUSED
    if rank.state is RankState.BLOCKED:
        return View.BLOCKED
    if rank.state is RankState.PAUSING:
        return View.PAUSING
    return View.WAITING if rank.held else View.RUNNING


def job_stopped(ranks: Mapping[int, Rank]) -> bool:
    """Whether the job as a whole is halted: some rank is stopped in the debugger.

    The root session shows the job paused exactly then (its one thread is "stopped").
    """
    return any(m.state is RankState.STOPPED for m in ranks.values())


def job_summary(ranks: Mapping[int, Rank]) -> str:
    """One line for the root session's thread: ``4 ranks: 1 post-mortem, 3 paused``."""
    counts: dict[View, int] = {}
    for m in ranks.values():
        counts[view(m)] = counts.get(view(m), 0) + 1
    parts = [f"{counts[v]} {v.value}" for v in View if counts.get(v)]
    n = len(ranks)
    return f"{n} rank{'s' if n != 1 else ''}" + (f": {', '.join(parts)}" if parts else "")
