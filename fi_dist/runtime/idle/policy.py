"""The culling policy: a pure function of what was observed -> what to do.

Nothing here reads a clock, a file or a device; :func:`decide` takes the previous
:class:`WatchState` and one :class:`Observation` and returns the next state and a
:class:`Verdict`, so the whole behaviour is testable as tables.

Idle means: every device under the threshold, no training step, no debugger action
and no expected quiet phase for the whole window. Anything else is activity and
restarts the window. A paused job whose human keeps using the debugger is therefore
kept; one whose client has been silent for the window is the forgotten session.

Hang is separate: a node that looks busy while a rank's step heartbeat is older than
``hang_factor`` median step times (a rank spinning in a collective shows 100 %).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

QUIET_STATES = ("checkpoint", "saving", "restoring", "loading", "rendezvous")
"""Rank ``state`` prefixes of expected quiet phases: they count as activity."""

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
    """No activity seen yet: start-up is not idle."""
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
    """A rank is in an expected quiet phase (checkpoint save, rendezvous)."""


@dataclass(frozen=True)
class WatchState:
    last_active: float | None = None
    """When activity was last seen; None until the first (watching starts there)."""
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
    marks: list[float] = []
    if busy or obs.quiet:
        marks.append(obs.time)
    # An empty sample (no rank process yet, a failed read, a blind sampler) is no
    # evidence of idleness: it keeps a running watch alive but does not start one.
    if not obs.utilisation and state.last_active is not None:
        marks.append(obs.time)
    if obs.debug_activity is not None:
        marks.append(min(obs.debug_activity, obs.time))
    if obs.steps:
        marks.append(min(max(t for _, t in obs.steps.values()), obs.time))
    last = max([m for m in (state.last_active, *marks) if m is not None], default=None)
    durations = _durations(state.steps, obs.steps, state.step_durations)
    new = replace(state, last_active=last, steps=dict(obs.steps), step_durations=durations)

    hung: tuple[int, ...] = ()
    limit = hang_after(policy, durations)
    if busy and limit is not None:
        hung = tuple(sorted(r for r, (_, t) in obs.steps.items() if obs.time - t > limit))

    if last is None:
        return new, Verdict(Action.KEEP, Phase.STARTING, 0.0, hung, "no activity yet")
    idle_for = max(obs.time - last, 0.0)
    if state.stopped:
        return new, Verdict(Action.KEEP, Phase.ENDING, idle_for, hung, "already ending")
    if idle_for >= policy.timeout:
        new = replace(new, stopped=True, warned=True)
        return new, Verdict(Action.STOP, Phase.ENDING, idle_for, hung,
                            f"idle for {idle_for:.0f}s (timeout {policy.timeout:g}s)")
    if idle_for >= policy.timeout - policy.lead:
        if state.warned:
            return new, Verdict(Action.KEEP, Phase.WARNED, idle_for, hung, "warned")
        new = replace(new, warned=True)
        return new, Verdict(Action.WARN, Phase.WARNED, idle_for, hung,
                            f"idle for {idle_for:.0f}s; ending in "
                            f"{policy.timeout - idle_for:.0f}s")
    recent = 2 * max(policy.interval, HEARTBEAT_PERIOD)
    phase = Phase.HUNG if hung else (
        Phase.ACTIVE if busy or idle_for < recent else Phase.IDLE)
    if state.warned:
        new = replace(new, warned=False)
        return new, Verdict(Action.RESUME, phase, idle_for, hung, "activity resumed")
    return new, Verdict(Action.KEEP, phase, idle_for, hung,
                        f"ranks {list(hung)} hung" if hung else "")
