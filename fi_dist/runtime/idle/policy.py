"""The culling policy: a pure function of what was observed -> what to do.

Nothing here reads a clock, a file or a device; :func:`decide` takes the previous
:class:`WatchState` and one :class:`Observation` and returns the next state and a
:class:`Verdict`, so the whole behaviour is testable as tables.

Idle means: every device under the threshold, no training step, no debugger action,
no rank starting and no expected quiet phase for the whole window. Anything else is
activity and restarts the window. A paused job whose human keeps using the debugger is
therefore kept; one whose client has been silent for the window is the forgotten
session.

The window runs from the watcher's first observation: start-up grace is one window,
not "until the first activity" (a job idle from its start, stuck at rendezvous or
waiting for a debugger nobody brings, is ended too). A quiet phase (a checkpoint save)
counts as activity for at most one window.

Hang is separate: a node that looks busy while a rank's step heartbeat is older than
``hang_factor`` median step times (a rank spinning in a collective shows 100 %).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

QUIET_STATES = ("checkpoint", "saving", "restoring", "loading")
"""Rank ``state`` prefixes of expected quiet phases: activity, for at most one window.
(Not rendezvous: one that does not complete within a window is the stuck job to end.)"""

HEARTBEAT_PERIOD = 1.0
"""Seconds between two step-heartbeat writes at most (fi_dist.runtime.heartbeat throttle)."""

_STEP_HISTORY = 64


class Action(StrEnum):
    """What the escalation does after one observation.

    KEEP (nothing) -> WARN (once, ``warn_lead`` before the end) -> STOP (once: checkpoint
    and end). RESUME follows a WARN when activity came back before the end.
    """

    KEEP = "keep"
    WARN = "warn"
    STOP = "stop"
    RESUME = "resume"


class Phase(StrEnum):
    """The node's idle state, as ``fi-dist status`` shows it."""

    STARTING = "starting"
    """No activity seen yet since the watch started (the window runs all the same)."""
    ACTIVE = "active"
    IDLE = "idle"
    """Idle for less than the window."""
    WARNED = "warned"
    ENDING = "ending"
    """Idle for the whole window: checkpoint requested, node being ended."""
    HUNG = "hung"


@dataclass(frozen=True)
class Policy:
    """Thresholds of the pure policy (from :class:`~fi_dist.spec.IdleSpec`)."""

    timeout: float
    threshold: float = 5.0
    warn_lead: float = 300.0
    hang_factor: float = 10.0
    interval: float = 10.0

    @property
    def lead(self) -> float:
        return min(self.warn_lead, self.timeout / 2)


@dataclass(frozen=True)
class Observation:
    """One sample of the node and the job's signals."""

    time: float
    """Wall-clock seconds (heartbeat timestamps are wall clock too)."""
    utilisation: tuple[float, ...]
    """Percent per device (GPU) or per rank process (CPU); empty = no sample."""
    steps: Mapping[int, tuple[int, float]] = field(default_factory=dict)
    """This node's ranks' last training step and when it ended."""
    debug_activity: float | None = None
    """When a debugger client last did something anywhere in the job."""
    quiet: bool = False
    """A rank is in an expected quiet phase (checkpoint save or load)."""
    ranks: int = 0
    """This node's live rank processes (an empty sample with none is no evidence of use)."""
    started: float | None = None
    """When this node's newest rank process started (a start is activity)."""


@dataclass(frozen=True)
class WatchState:
    last_active: float | None = None
    """When activity was last seen; the first observation's time until then."""
    active_seen: bool = False
    """Whether anything but the watch's own start was activity yet."""
    quiet_since: float | None = None
    """When the current quiet phase began (None outside one)."""
    warned: bool = False
    stopped: bool = False
    steps: Mapping[int, tuple[int, float]] = field(default_factory=dict)
    step_durations: tuple[float, ...] = ()
    """Recent per-step seconds of this node's ranks (for the median)."""


@dataclass(frozen=True)
class Verdict:
    action: Action
    phase: Phase
    idle_for: float
    """Seconds since the last activity (0 while active or starting)."""
    hung: tuple[int, ...] = ()
    """Ranks whose heartbeat is stale while the node is busy."""
    reason: str = ""


def _durations(prev: Mapping[int, tuple[int, float]], now: Mapping[int, tuple[int, float]],
               history: tuple[float, ...]) -> tuple[float, ...]:
    new = list(history)
    for rank, (step, t) in now.items():
        old = prev.get(rank)
        if old is not None and step > old[0] and t > old[1]:
            new.append((t - old[1]) / (step - old[0]))
    return tuple(new[-_STEP_HISTORY:])


def hang_after(policy: Policy, durations: tuple[float, ...]) -> float | None:
    """Seconds without a step that make a busy rank hung; None before two heartbeats."""
    if not durations:
        return None
    # A healthy rank's heartbeat is up to one write period (plus a step) old when it is
    # read, and it is read once per interval: never call that a hang.
    floor = 2 * HEARTBEAT_PERIOD + policy.interval
    return max(policy.hang_factor * statistics.median(durations), floor)


def decide(policy: Policy, state: WatchState, obs: Observation) -> tuple[WatchState, Verdict]:
    """Fold one observation into the state; say what to do now."""
    busy = any(u >= policy.threshold for u in obs.utilisation)
    quiet_since = (state.quiet_since if state.quiet_since is not None else obs.time
                   ) if obs.quiet else None
    marks: list[float] = []
    if busy or (quiet_since is not None and obs.time - quiet_since < policy.timeout):
        marks.append(obs.time)
    # Live ranks but no sample for them (a process seen for the first time, a failed
    # read, a blind sampler) is no evidence of idleness. No rank at all is no activity.
    if not obs.utilisation and obs.ranks:
        marks.append(obs.time)
    if obs.debug_activity is not None:
        marks.append(min(obs.debug_activity, obs.time))
    if obs.steps:
        marks.append(min(max(t for _, t in obs.steps.values()), obs.time))
    if obs.started is not None:
        marks.append(min(obs.started, obs.time))
    # The watch starts with the first observation: start-up grace is one window.
    first = obs.time if state.last_active is None else state.last_active
    last = max([first, *marks])
    active_seen = state.active_seen or bool(marks)
    durations = _durations(state.steps, obs.steps, state.step_durations)
    new = replace(state, last_active=last, active_seen=active_seen, quiet_since=quiet_since,
                  steps=dict(obs.steps), step_durations=durations)

    hung: tuple[int, ...] = ()
    limit = hang_after(policy, durations)
    if busy and limit is not None:
        hung = tuple(sorted(r for r, (_, t) in obs.steps.items() if obs.time - t > limit))

    idle_for = max(obs.time - last, 0.0)
    since = "idle" if active_seen else "idle since the start (no activity at all)"
    if state.stopped:
        return new, Verdict(Action.KEEP, Phase.ENDING, idle_for, hung, "already ending")
    if idle_for >= policy.timeout:
        new = replace(new, stopped=True, warned=True)
        return new, Verdict(Action.STOP, Phase.ENDING, idle_for, hung,
                            f"{since} for {idle_for:.0f}s (timeout {policy.timeout:g}s)")
    if idle_for >= policy.timeout - policy.lead:
        if state.warned:
            return new, Verdict(Action.KEEP, Phase.WARNED, idle_for, hung, "warned")
        new = replace(new, warned=True)
        return new, Verdict(Action.WARN, Phase.WARNED, idle_for, hung,
                            f"{since} for {idle_for:.0f}s; ending in "
                            f"{policy.timeout - idle_for:.0f}s")
    if not active_seen:
        return new, Verdict(Action.KEEP, Phase.STARTING, idle_for, hung, "no activity yet")
    recent = 2 * max(policy.interval, HEARTBEAT_PERIOD)
    phase = Phase.HUNG if hung else (
        Phase.ACTIVE if busy or idle_for < recent else Phase.IDLE)
    if state.warned:
        new = replace(new, warned=False)
        return new, Verdict(Action.RESUME, phase, idle_for, hung, "activity resumed")
    return new, Verdict(Action.KEEP, phase, idle_for, hung,
                        f"ranks {list(hung)} hung" if hung else "")
