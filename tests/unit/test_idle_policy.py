"""The culling policy as tables: observations in, verdicts out (no clock, no files)."""

from __future__ import annotations

import pytest

from fi_dist.runtime.idle.policy import (
    Action,
    Observation,
    Phase,
    Policy,
    WatchState,
    decide,
    hang_after,
)

POLICY = Policy(timeout=10.0, threshold=5.0, warn_lead=4.0, hang_factor=5.0, interval=1.0)


def run(observations: list[Observation], policy: Policy = POLICY):
    state = WatchState()
    out = []
    for obs in observations:
        state, verdict = decide(policy, state, obs)
        out.append(verdict)
    return out


def util(t: float, *values: float, **kw) -> Observation:
    return Observation(time=t, utilisation=tuple(values), **kw)


def actions(verdicts) -> dict[float, Action]:
    return {i: v.action for i, v in enumerate(verdicts) if v.action is not Action.KEEP}


def test_start_up_grace_is_one_window_not_until_the_first_activity():
    """Idle from its start (ranks never came, or a wait for a client nobody brings):
    ended one window after the watch began, and the reason says so."""
    verdicts = run([util(t) for t in range(30)])
    assert actions(verdicts) == {6: Action.WARN, 10: Action.STOP}
    assert [v.phase for v in verdicts[:6]] == [Phase.STARTING] * 6
    assert verdicts[10].reason == "idle since the start (no activity at all) for 10s (timeout 10s)"


@pytest.mark.parametrize(("case", "observations", "stop_at"), [
    # A node whose rank processes never start (stuck at rendezvous): no rank, no sample.
    ("no rank ever", [util(t) for t in range(30)], 10),
    # Ranks start at t=2 and sit at --wait-for-client (or a barrier): the start counts.
    ("held from the start", [util(t, *((0.0, 0.0) if t >= 3 else ()), ranks=2 if t >= 2 else 0,
                                   started=2.0 if t >= 2 else None) for t in range(30)], 12),
    # The sleeper with --idle-timeout 10 and the default 10 s interval, before the
    # clamp: the first sample sees no process, the second sees them for the first time
    # (no CPU figure yet), the third sees them asleep. It used to run forever.
    ("sleeper, 10 s samples", [util(0), util(10, ranks=2, started=1.0),
                               util(20, 0.0, 0.0, ranks=2, started=1.0),
                               util(30, 0.0, 0.0, ranks=2, started=1.0)], 20),
])
def test_idle_from_the_start_is_ended_after_the_window(case, observations, stop_at):
    verdicts = run(observations)
    stops = [obs.time for obs, v in zip(observations, verdicts, strict=True)
             if v.action is Action.STOP]
    assert stops == [stop_at], case


def test_a_sleeper_is_culled_within_the_window_plus_two_samples():
    """The same sleeper sampled at the clamped interval (timeout/3): the ranks started at
    t=1, computed until some time in (3.3, 6.7] (the second sample shows it), then slept."""
    period = 10 / 3
    obs = [util(0), util(period, ranks=2, started=1.0), util(2 * period, 60.0, 40.0, ranks=2,
                                                              started=1.0)]
    obs += [util(k * period, 0.0, 0.0, ranks=2, started=1.0) for k in range(3, 12)]
    verdicts = run(obs)
    stop = next(o.time for o, v in zip(obs, verdicts, strict=True) if v.action is Action.STOP)
    for slept_at in (period + 0.01, 2 * period):  # when it went to sleep, at the extremes
        assert POLICY.timeout <= stop - slept_at + 1e-9 <= POLICY.timeout + 2 * period + 1e-9


def test_empty_samples_of_live_ranks_are_no_evidence_of_idleness():
    # A blind sampler (NVML asked for and unusable) never ends a job it cannot see.
    verdicts = run([util(t, ranks=2, started=0.0) for t in range(40)])
    assert Action.STOP not in actions(verdicts).values()


def test_busy_then_idle_warns_at_lead_and_stops_at_timeout_once():
    obs = [util(0, 80.0, 60.0)] + [util(t, 0.0, 1.0) for t in range(1, 16)]
    verdicts = run(obs)
    # warn_lead 4 of timeout 10: warn when idle 6 s, stop when idle 10 s, then nothing.
    assert actions(verdicts) == {6: Action.WARN, 10: Action.STOP}
    assert verdicts[10].idle_for == pytest.approx(10.0)
    assert [v.phase for v in verdicts[11:]] == [Phase.ENDING] * 5


@pytest.mark.parametrize(("values", "idle"), [
    ((4.9, 4.9), True),       # every device under the threshold
    ((0.0, 5.0), False),      # one device at the threshold is busy
    ((100.0, 0.0), False),    # one rank spinning in a collective keeps the node
    ((0.0,) * 8, True),
])
def test_idle_only_when_every_device_is_under_the_threshold(values, idle):
    obs = [util(0, 50.0)] + [util(t, *values) for t in range(1, 12)]
    stopped = Action.STOP in actions(run(obs)).values()
    assert stopped is idle


def test_warn_lead_is_capped_at_half_the_timeout():
    policy = Policy(timeout=10.0, warn_lead=300.0, interval=1.0)
    verdicts = run([util(0, 50.0)] + [util(t, 0.0) for t in range(1, 11)], policy)
    assert actions(verdicts) == {5: Action.WARN, 10: Action.STOP}


def test_paused_with_a_human_using_the_debugger_is_kept():
    # Paused: the device is idle, but the client acts every 3 s.
    obs = [util(0, 50.0)] + [util(t, 0.0, debug_activity=float(t - t % 3))
                             for t in range(1, 40)]
    verdicts = run(obs)
    assert Action.STOP not in actions(verdicts).values()
    assert Action.WARN not in actions(verdicts).values()


def test_paused_with_a_silent_client_is_the_forgotten_session():
    # The client attached at t=2 and never acted again.
    obs = [util(t, 0.0, debug_activity=2.0) for t in range(2, 20)]
    verdicts = run(obs)
    assert actions(verdicts) == {6: Action.WARN, 10: Action.STOP}  # idle 6 s at t=8, 10 at 12


def test_debugger_activity_arms_the_watch_and_restarts_the_window():
    obs = [util(t, 0.0, debug_activity=5.0 if t >= 5 else None) for t in range(0, 25)]
    verdicts = run(obs)
    assert verdicts[4].phase is Phase.STARTING
    assert actions(verdicts) == {11: Action.WARN, 15: Action.STOP}


def test_quiet_phase_does_not_count_as_idle():
    # Checkpoint save from t=3 to t=12 (GPU idle while writing): the window starts after.
    obs = [util(0, 90.0)] + [util(t, 0.0, quiet=3 <= t <= 12) for t in range(1, 30)]
    verdicts = run(obs)
    assert actions(verdicts) == {18: Action.WARN, 22: Action.STOP}


def test_training_steps_are_activity_even_at_low_utilisation():
    obs = [util(t, 1.0, steps={0: (t, float(t))}) for t in range(40)]
    assert Action.STOP not in actions(run(obs)).values()


def test_activity_after_a_warning_resumes_and_a_later_idle_warns_again():
    obs = ([util(0, 50.0)] + [util(t, 0.0) for t in range(1, 8)] + [util(8, 70.0)]
           + [util(t, 0.0) for t in range(9, 20)])
    verdicts = run(obs)
    assert actions(verdicts) == {6: Action.WARN, 8: Action.RESUME, 14: Action.WARN,
                                 18: Action.STOP}


def test_a_quiet_phase_counts_for_one_window_at_most():
    # A save that never ends (state "saving ..." forever from t=3) counts until t=12, a
    # window after it began (as a save that ended then would), then the node is idle.
    obs = [util(0, 90.0)] + [util(t, 0.0, quiet=t >= 3) for t in range(1, 40)]
    assert actions(run(obs)) == {18: Action.WARN, 22: Action.STOP}


def test_hung_rank_is_stale_heartbeat_on_a_busy_node():
    # Both ranks step every 0.5 s until t=5; then rank 1 stops while the node stays busy.
    obs = []
    for i in range(40):
        t = i * 0.5
        steps = {0: (i, t), 1: (min(i, 10), min(t, 5.0))}
        obs.append(util(t, 100.0, 100.0, steps=steps))
    verdicts = run(obs)
    limit = hang_after(POLICY, (0.5,))
    assert limit == pytest.approx(max(5 * 0.5, 2 * 1.0 + 1.0))
    first_hung = next(i for i, v in enumerate(verdicts) if v.hung)
    assert first_hung * 0.5 == pytest.approx(5.0 + limit + 0.5)
    assert verdicts[first_hung].hung == (1,)
    assert verdicts[first_hung].phase is Phase.HUNG
    assert all(v.action is Action.KEEP for v in verdicts)  # a hang is reported, not culled


def test_stale_heartbeat_on_an_idle_node_is_idle_not_hung():
    obs = [util(i * 0.5, 0.0, steps={0: (min(i, 4), min(i * 0.5, 2.0))}) for i in range(40)]
    verdicts = run(obs)
    assert not any(v.hung for v in verdicts)
    assert Action.STOP in actions(verdicts).values()


def test_no_hang_verdict_before_two_heartbeats():
    obs = [util(t, 100.0, steps={0: (1, 0.0)}) for t in range(30)]
    assert not any(v.hung for v in run(obs))


def test_detection_latency_is_within_window_plus_two_samples():
    # A sampled signal is averaged over the previous interval, so a job that stops at a
    # random point shows busy for at most one more sample; STOP needs one more.
    interval = 0.7
    policy = Policy(timeout=5.0, interval=interval)
    for stop_at in (1.0, 1.05, 1.3, 1.69, 2.1):
        obs = []
        for i in range(40):
            t = i * interval
            busy_share = min(max(stop_at - (t - interval), 0.0), interval) / interval
            obs.append(util(t, 100.0 * busy_share))
        verdicts = run(obs, policy)
        stop = next(i for i, v in enumerate(verdicts) if v.action is Action.STOP) * interval
        assert stop - stop_at <= policy.timeout + 2 * interval + 1e-9
