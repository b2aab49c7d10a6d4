"""The hub's break-all machine as tables: one rank's state and an event in, next state and
actions out (no clock, no sockets, no process)."""

from __future__ import annotations

import itertools

import pytest

from fi_dist.runtime.debug.breakall import (
    BLOCKED_AFTER,
    PAUSE_RETRY_MAX,
    RECORD_STOP_AFTER,
    UNPAUSE_WINDOW,
    After,
    AskStack,
    AskWhere,
    Blocked,
    ChildPause,
    ClientGone,
    Continue,
    Continued,
    Do,
    Gone,
    Hold,
    Located,
    Notify,
    Pause,
    PauseFailed,
    PauseOverdue,
    PostMortem,
    Rank,
    RankGone,
    RankState,
    RecordStop,
    Release,
    Resume,
    SessionConfigured,
    ShowBlocked,
    Stopped,
    View,
    continue_targets,
    forwards_continue,
    job_stopped,
    job_summary,
    pause_targets,
    retry_delay,
    step,
    view,
)

RUNNING, PAUSING, BLOCKED, STOPPED, EXITED = (RankState.RUNNING, RankState.PAUSING,
                                              RankState.BLOCKED, RankState.STOPPED,
                                              RankState.EXITED)
SUMMARY = "blocked in collective all_reduce at train.py:40"
STACK = "    train.py:40 in main\n"


def rank(state: RankState = RUNNING, **kw) -> Rank:
    return Rank(state, **kw)


def first_stop(epoch: int) -> tuple:
    return (Do.PAUSE_OTHERS, After(RECORD_STOP_AFTER, RecordStop(epoch)), Do.SHOW_STOP)


def paused_stop(epoch: int) -> tuple:
    return (After(RECORD_STOP_AFTER, RecordStop(epoch)), Do.SHOW_STOP)


def sent_pause(epoch: int) -> tuple:
    return (Do.PAUSE, After(BLOCKED_AFTER, PauseOverdue(epoch, 0)))


RUNNING_NOTE = Notify("running")
PM = "post-mortem: ValueError"

ROWS = [
    # --- stops -----------------------------------------------------------------------
    pytest.param(rank(), Stopped("breakpoint", 1.0), rank(STOPPED, epoch=1), first_stop(1),
                 id="breakpoint stop: the first stop pauses the others"),
    pytest.param(rank(), Stopped("exception", 1.0), rank(STOPPED, epoch=1), first_stop(1),
                 id="exception (post-mortem) stop is a first stop"),
    pytest.param(rank(), Stopped("pause", 1.0), rank(STOPPED, epoch=1), first_stop(1),
                 id="the client's own pause of a running rank is a first stop"),
    pytest.param(rank(held=True), Stopped("breakpoint", 1.0), rank(STOPPED, epoch=1),
                 first_stop(1), id="held rank reached fi_dist.breakpoint: hold dropped"),
    pytest.param(rank(PAUSING, epoch=3), Stopped("pause", 1.0), rank(STOPPED, epoch=4),
                 paused_stop(4), id="break-all pause landed: no second fan-out"),
    pytest.param(rank(BLOCKED, epoch=3), Stopped("pause", 1.0), rank(STOPPED, epoch=4),
                 paused_stop(4), id="blocked rank stops once the collective returns"),
    pytest.param(rank(PAUSING, owed=True), Stopped("breakpoint", 1.0),
                 rank(STOPPED, epoch=1), paused_stop(1),
                 id="owed pause is moot once the rank stops on its own"),
    pytest.param(rank(STOPPED, epoch=2), Stopped("step", 1.0), rank(STOPPED, epoch=3),
                 first_stop(3), id="a step ends: stopped again, others already stopped"),
    pytest.param(rank(cancelled_at=10.0), Stopped("pause", 10.0 + UNPAUSE_WINDOW - 0.1),
                 rank(), (Do.DROP_STOP,),
                 id="cancelled pause landing late within the window is dropped"),
    pytest.param(rank(cancelled_at=10.0), Stopped("pause", 10.0 + UNPAUSE_WINDOW),
                 rank(STOPPED, epoch=1), first_stop(1),
                 id="a pause stop after the window is a new stop"),
    pytest.param(rank(cancelled_at=10.0), Stopped("breakpoint", 11.0),
                 rank(STOPPED, epoch=1), first_stop(1),
                 id="a breakpoint stop within the window is real"),
    pytest.param(rank(PAUSING, owed=True, cancelled_at=10.0), Stopped("pause", 11.0),
                 rank(STOPPED, epoch=1), paused_stop(1),
                 id="a new pause after a cancelled one: its stop is real"),
    pytest.param(rank(EXITED), Stopped("breakpoint", 1.0), rank(EXITED), (),
                 id="stop from an exited rank's closing session is ignored"),
    # --- continued (the rank's own continue, or a step starting) ----------------------
    pytest.param(rank(STOPPED, epoch=2), Continued(), rank(RUNNING, epoch=2), (RUNNING_NOTE,),
                 id="continued event: stopped rank runs"),
    pytest.param(rank(), Continued(), rank(), (), id="continued while running: nothing"),
    pytest.param(rank(PAUSING, epoch=1), Continued(), rank(PAUSING, epoch=1), (),
                 id="continued while pausing: the pause stays pending"),
    # --- break-all pause -------------------------------------------------------------
    pytest.param(rank(), Pause(live=True), rank(PAUSING, epoch=1), sent_pause(1),
                 id="pause sent in-process, blocked check armed"),
    pytest.param(rank(), Pause(live=False), rank(PAUSING, owed=True), (),
                 id="pause owed to a rank whose session is still configuring"),
    pytest.param(rank(cancelled_at=4.0), Pause(live=True), rank(PAUSING, epoch=1),
                 sent_pause(1), id="a new pause forgets the cancelled one"),
    pytest.param(rank(held=True), Pause(live=True), rank(held=True), (),
                 id="held rank (on its way to fi_dist.breakpoint) is never paused"),
    pytest.param(rank(PAUSING, epoch=1), Pause(live=True), rank(PAUSING, epoch=1), (),
                 id="already pausing: no second pause"),
    pytest.param(rank(BLOCKED, epoch=1), Pause(live=True), rank(BLOCKED, epoch=1), (),
                 id="already blocked: no second pause"),
    pytest.param(rank(STOPPED), Pause(live=True), rank(STOPPED), (),
                 id="stopped rank is not paused"),
    # --- no stop within BLOCKED_AFTER: re-send, report blocked --------------------------
    pytest.param(rank(PAUSING, epoch=1), PauseOverdue(1, 0), rank(PAUSING, epoch=1),
                 (Do.DAP_PAUSE, AskStack(1), After(2 * BLOCKED_AFTER, PauseOverdue(1, 1))),
                 id="overdue: pause through the adapter, ask the stack"),
    pytest.param(rank(BLOCKED, epoch=1), PauseOverdue(1, 1), rank(BLOCKED, epoch=1),
                 (Do.PAUSE, Do.DAP_PAUSE, After(4 * BLOCKED_AFTER, PauseOverdue(1, 2))),
                 id="still blocked: re-send both ways, back off"),
    pytest.param(rank(BLOCKED, epoch=1), PauseOverdue(1, 7), rank(BLOCKED, epoch=1),
                 (Do.PAUSE, Do.DAP_PAUSE, After(PAUSE_RETRY_MAX, PauseOverdue(1, 8))),
                 id="backoff capped at PAUSE_RETRY_MAX"),
    pytest.param(rank(PAUSING, epoch=2), PauseOverdue(1, 0), rank(PAUSING, epoch=2), (),
                 id="overdue check of an older pause is stale"),
    pytest.param(rank(STOPPED, epoch=2), PauseOverdue(1, 0), rank(STOPPED, epoch=2), (),
                 id="overdue check after the stop does nothing"),
    pytest.param(rank(epoch=1, cancelled_at=3.0), PauseOverdue(1, 0),
                 rank(epoch=1, cancelled_at=3.0), (),
                 id="overdue check after the pause was cancelled does nothing"),
    pytest.param(rank(PAUSING, epoch=1), Blocked(1, SUMMARY, STACK), rank(BLOCKED, epoch=1),
                 (Notify(SUMMARY), ShowBlocked(SUMMARY, STACK)),
                 id="stack arrived: blocked in collective"),
    pytest.param(rank(PAUSING, epoch=2), Blocked(1, SUMMARY, STACK), rank(PAUSING, epoch=2),
                 (), id="stack of an older pause is stale"),
    pytest.param(rank(STOPPED, epoch=1), Blocked(1, SUMMARY, STACK), rank(STOPPED, epoch=1),
                 (), id="stack arriving after the stop is ignored"),
    pytest.param(rank(epoch=1, cancelled_at=3.0), Blocked(1, SUMMARY, STACK),
                 rank(epoch=1, cancelled_at=3.0), (),
                 id="stack arriving after a continue is ignored"),
    # --- pause-failed from the agent ---------------------------------------------------
    pytest.param(rank(PAUSING, epoch=1), PauseFailed(live=True), rank(PAUSING, epoch=1),
                 (Do.DAP_PAUSE,), id="pause-failed while pausing: pause through the adapter"),
    pytest.param(rank(PAUSING, epoch=1), PauseFailed(live=False),
                 rank(PAUSING, epoch=1, owed=True), (),
                 id="pause-failed with no live session: owed until configured"),
    pytest.param(rank(BLOCKED, epoch=1), PauseFailed(live=True), rank(BLOCKED, epoch=1),
                 (Do.DAP_PAUSE,), id="pause-failed while blocked: pause through the adapter"),
    pytest.param(rank(BLOCKED, epoch=1), PauseFailed(live=False),
                 rank(BLOCKED, epoch=1, owed=True), (),
                 id="pause-failed while blocked, no live session: owed"),
    pytest.param(rank(), PauseFailed(live=True), rank(), (),
                 id="pause-failed after a continue: nothing"),
    pytest.param(rank(STOPPED), PauseFailed(live=True), rank(STOPPED), (),
                 id="pause-failed after the stop: nothing"),
    # --- hold / release (fi_dist.breakpoint) -------------------------------------------
    pytest.param(rank(), Hold(5.0), rank(held=True), (), id="hold: never paused from now"),
    pytest.param(rank(PAUSING, epoch=1), Hold(5.0), rank(held=True, epoch=1, cancelled_at=5.0),
                 (Do.UNPAUSE,), id="late hold: the pause that went out is taken back"),
    pytest.param(rank(BLOCKED, epoch=1), Hold(5.0), rank(held=True, epoch=1, cancelled_at=5.0),
                 (Do.UNPAUSE,), id="late hold while blocked: pause taken back"),
    pytest.param(rank(PAUSING, owed=True), Hold(5.0), rank(held=True, cancelled_at=5.0),
                 (Do.UNPAUSE,), id="late hold with the pause owed: owed dropped"),
    pytest.param(rank(STOPPED, epoch=1), Hold(5.0), rank(STOPPED, held=True, epoch=1), (),
                 id="hold while stopped: flag only"),
    pytest.param(rank(held=True), Release(), rank(), (), id="release"),
    pytest.param(rank(STOPPED, held=True), Release(), rank(STOPPED), (),
                 id="release while stopped"),
    # --- continue (job-level: the targets get Continue, the rest Resume) ---------------
    pytest.param(rank(STOPPED, epoch=2), Continue(9.0), rank(RUNNING, epoch=2),
                 (Do.RESUMED, Do.DAP_CONTINUE, RUNNING_NOTE),
                 id="continue a stopped rank through its adapter"),
    pytest.param(rank(PAUSING, epoch=2), Continue(9.0), rank(epoch=2, cancelled_at=9.0),
                 (Do.RESUMED, Do.UNPAUSE, RUNNING_NOTE),
                 id="continue to a never-stopped (pausing) rank: unpause, no DAP continue"),
    pytest.param(rank(BLOCKED, epoch=2), Continue(9.0), rank(epoch=2, cancelled_at=9.0),
                 (Do.RESUMED, Do.UNPAUSE, RUNNING_NOTE),
                 id="continue to a blocked rank: unpause in-process"),
    pytest.param(rank(PAUSING, owed=True), Continue(9.0), rank(cancelled_at=9.0),
                 (Do.RESUMED, Do.UNPAUSE, RUNNING_NOTE),
                 id="continue drops an owed pause"),
    pytest.param(rank(), Continue(9.0), rank(), (Do.RESUMED,), id="continue while running"),
    pytest.param(rank(STOPPED, epoch=2), Resume(), rank(STOPPED, epoch=2), (Do.RESUMED,),
                 id="origin of a child's continue: its continued event follows"),
    pytest.param(rank(held=True), Resume(), rank(held=True), (Do.RESUMED,),
                 id="resume releases fi_dist.breakpoint(rank=k) waiters"),
    # --- a child session's own pause --------------------------------------------------
    pytest.param(rank(cancelled_at=3.0), ChildPause(), rank(), (),
                 id="child pause: the stop it brings is not a late cancelled one"),
    pytest.param(rank(STOPPED, epoch=1), ChildPause(), rank(STOPPED, epoch=1), (),
                 id="child pause of a stopped rank: nothing"),
    # --- session configured ------------------------------------------------------------
    pytest.param(rank(PAUSING, owed=True), SessionConfigured(), rank(PAUSING, epoch=1),
                 sent_pause(1), id="owed pause goes out once the session is configured"),
    pytest.param(rank(BLOCKED, epoch=1, owed=True), SessionConfigured(),
                 rank(BLOCKED, epoch=1), (),
                 id="owed while blocked: the pause watch keeps re-sending"),
    pytest.param(rank(PAUSING, epoch=1), SessionConfigured(), rank(PAUSING, epoch=1), (),
                 id="configured with nothing owed"),
    pytest.param(rank(), SessionConfigured(), rank(), (), id="configured while running"),
    # --- where a stopped rank stopped (status) ----------------------------------------
    pytest.param(rank(STOPPED, epoch=2), RecordStop(2), rank(STOPPED, epoch=2),
                 (AskWhere(2),), id="record the stop: ask the top frame"),
    pytest.param(rank(STOPPED, epoch=3), RecordStop(2), rank(STOPPED, epoch=3), (),
                 id="record of an older stop is stale"),
    pytest.param(rank(epoch=2), RecordStop(2), rank(epoch=2), (),
                 id="continued before the record: nothing asked"),
    pytest.param(rank(STOPPED, epoch=2), Located(2, "train.py:42"), rank(STOPPED, epoch=2),
                 (Notify("paused at train.py:42"),), id="located: paused at file:line"),
    pytest.param(rank(STOPPED, epoch=3), Located(2, "train.py:42"), rank(STOPPED, epoch=3),
                 (), id="location of an older stop is stale"),
    pytest.param(rank(epoch=2), Located(2, "train.py:42"), rank(epoch=2), (),
                 id="location arriving after a continue is not shown"),
    # --- client gone: every rank resumes ---------------------------------------------
    pytest.param(rank(STOPPED, epoch=2), ClientGone(9.0), rank(epoch=2),
                 (Do.DETACH, RUNNING_NOTE, Do.RESUMED), id="client gone while stopped"),
    pytest.param(rank(PAUSING, epoch=2, owed=True), ClientGone(9.0),
                 rank(epoch=2, cancelled_at=9.0), (Do.DETACH, RUNNING_NOTE, Do.RESUMED),
                 id="client gone while pausing: its pause counts as cancelled"),
    pytest.param(rank(BLOCKED, epoch=2), ClientGone(9.0), rank(epoch=2, cancelled_at=9.0),
                 (Do.DETACH, RUNNING_NOTE, Do.RESUMED), id="client gone while blocked"),
    pytest.param(rank(held=True), ClientGone(9.0), rank(held=True),
                 (Do.DETACH, Do.RESUMED), id="client gone while running"),
    pytest.param(rank(EXITED), ClientGone(9.0), rank(EXITED), (),
                 id="client gone: exited rank untouched"),
    # --- rank gone ---------------------------------------------------------------------
    *(pytest.param(rank(s, epoch=1, held=True), RankGone(), rank(EXITED, epoch=1),
                   (Gone(s),), id=f"rank gone while {s}")
      for s in (RUNNING, PAUSING, BLOCKED, STOPPED)),
    pytest.param(rank(PAUSING, owed=True), RankGone(), rank(EXITED), (Gone(PAUSING),),
                 id="rank gone with a pause owed"),
    pytest.param(rank(EXITED), RankGone(), rank(EXITED), (), id="rank gone twice"),
    # --- post-mortem: the rank's own uncaught exception ---------------------------------
    pytest.param(rank(), PostMortem(PM), rank(post_mortem=PM), (Notify(PM),),
                 id="post-mortem announced before its stop"),
    pytest.param(rank(post_mortem=PM), Stopped("exception", 1.0),
                 rank(STOPPED, epoch=1, post_mortem=PM), first_stop(1),
                 id="the post-mortem stop keeps the flag and pauses the others"),
    pytest.param(rank(STOPPED, epoch=1), PostMortem(PM),
                 rank(STOPPED, epoch=1, post_mortem=PM), (Notify(PM),),
                 id="post-mortem announced just after its stop (other socket)"),
    pytest.param(rank(STOPPED, epoch=2, post_mortem=PM), Located(2, "train.py:42"),
                 rank(STOPPED, epoch=2, post_mortem=PM),
                 (Notify(f"{PM} at train.py:42"),),
                 id="located: the state line still says post-mortem, not paused at"),
    pytest.param(rank(STOPPED, epoch=2, post_mortem=PM), Continue(9.0), rank(epoch=2),
                 (Do.RESUMED, Do.DAP_CONTINUE, RUNNING_NOTE),
                 id="continue lets the exception go on: flag dropped"),
    pytest.param(rank(STOPPED, epoch=2, post_mortem=PM), ClientGone(9.0), rank(epoch=2),
                 (Do.DETACH, RUNNING_NOTE, Do.RESUMED),
                 id="client gone during post-mortem: flag dropped"),
    pytest.param(rank(EXITED), PostMortem(PM), rank(EXITED), (),
                 id="post-mortem of an exited rank is ignored"),
]


@pytest.mark.parametrize(("before", "event", "after", "actions"), ROWS)
def test_step(before: Rank, event, after: Rank, actions: tuple) -> None:
    assert step(before, event) == (after, actions)


# Every event kind, with the epochs the rows above use, against every state and flag mix.
EVENTS = [Stopped("pause", 1.0), Stopped("breakpoint", 1.0), Continued(), Pause(True),
          Pause(False), PauseOverdue(1, 0), PauseOverdue(1, 3), Blocked(1, SUMMARY, STACK),
          PauseFailed(True), PauseFailed(False), Hold(1.0), Release(), Continue(1.0),
          Resume(), ChildPause(), SessionConfigured(), RecordStop(1), Located(1, "f.py:1"),
          ClientGone(1.0), RankGone(), PostMortem(PM)]
STATES = [Rank(s, held=h, owed=o and s in (PAUSING, BLOCKED), cancelled_at=c, epoch=1)
          for s, h, o, c in itertools.product(RankState, (False, True), (False, True),
                                              (None, 0.5))]


@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_invariants_hold_for_every_state(event) -> None:
    for before in STATES:
        after, actions = step(before, event)
        assert not after.owed or after.state in (PAUSING, BLOCKED), (before, after)
        assert after.epoch >= before.epoch
        if before.state is EXITED:
            assert (after, actions) == (before, ())
        if Do.PAUSE in actions or Do.DAP_PAUSE in actions:
            assert after.state in (PAUSING, BLOCKED)
        if Do.DAP_CONTINUE in actions:
            assert before.state is STOPPED  # never to a rank that did not stop
        if after.state is PAUSING and before.state is RUNNING:
            assert not before.held


def run(events, start: Rank | None = None) -> tuple[Rank, list[tuple]]:
    state, out = start or Rank(), []
    for event in events:
        state, actions = step(state, event)
        out.append(actions)
    return state, out


def test_pause_owed_to_a_configuring_rank_goes_out_and_is_watched() -> None:
    state, out = run([Pause(live=False), SessionConfigured(), PauseOverdue(1, 0),
                      Blocked(1, SUMMARY, STACK), Stopped("pause", 3.0)])
    assert out[0] == ()
    assert out[1] == sent_pause(1)
    assert AskStack(1) in out[2]
    assert ShowBlocked(SUMMARY, STACK) in out[3]
    assert state == Rank(STOPPED, epoch=2) and out[4] == paused_stop(2)


def test_late_hold_then_the_cancelled_pause_lands() -> None:
    # The break-all pause went out, then the rank said it is on its way to
    # fi_dist.breakpoint(): the pause is taken back; if it lands anyway it is dropped,
    # and the rank's own breakpoint stop afterwards is a real (first) stop.
    state, out = run([Pause(live=True), Hold(2.0), PauseOverdue(1, 0), Stopped("pause", 2.5),
                      Stopped("breakpoint", 3.0)])
    assert out[1] == (Do.UNPAUSE,)
    assert out[2] == ()  # the watch of the cancelled pause stops
    assert out[3] == (Do.DROP_STOP,)
    assert out[4] == first_stop(2)
    assert state == Rank(STOPPED, epoch=2)


def test_cancelled_pause_lands_only_once_as_late() -> None:
    _, out = run([Pause(live=True), Continue(10.0), Stopped("pause", 11.0),
                  Stopped("pause", 12.0)])
    assert out[1] == (Do.RESUMED, Do.UNPAUSE, RUNNING_NOTE)
    assert out[2] == (Do.DROP_STOP,)
    assert out[3] == first_stop(2)


def test_pause_landing_after_the_client_left_breaks_nothing() -> None:
    # Before: the late stop paused every other rank in-process with no client to
    # continue them (the job hung until the next attach).
    _, out = run([Pause(live=True), PauseOverdue(1, 0), ClientGone(20.0),
                  Stopped("pause", 20.2)])
    assert out[3] == (Do.DROP_STOP,)


def test_child_pause_after_a_cancel_brings_a_real_stop() -> None:
    _, out = run([Pause(live=True), Continue(10.0), ChildPause(), Stopped("pause", 10.5)])
    assert out[3] == first_stop(2)


def test_retry_delay_doubles_to_the_cap_and_never_overflows() -> None:
    assert [retry_delay(a) for a in range(5)] == [0.6, 1.2, 2.4, 4.8, PAUSE_RETRY_MAX]
    assert retry_delay(10**6) == PAUSE_RETRY_MAX


# --- job-level decisions --------------------------------------------------------------
JOB = {0: Rank(STOPPED), 1: Rank(), 2: Rank(held=True), 3: Rank(PAUSING),
       4: Rank(BLOCKED), 5: Rank(EXITED), 6: Rank(), 7: Rank(STOPPED)}


@pytest.mark.parametrize(("origin", "expected"), [
    (0, [1, 6]),       # first stop on rank 0: running, not held ones
    (1, [6]),          # origin is skipped even while still marked running
    (None, [1, 6]),    # the client's pause of the whole job
])
def test_pause_targets(origin, expected) -> None:
    assert pause_targets(JOB, origin) == expected


@pytest.mark.parametrize(("origin", "expected"), [
    (None, [0, 3, 4, 7]),  # the client's continue: every halted rank
    (0, [3, 4, 7]),        # a child's continue went to rank 0's adapter already
])
def test_continue_targets(origin, expected) -> None:
    assert continue_targets(JOB, origin) == expected


@pytest.mark.parametrize(("state", "forwarded"), [
    (STOPPED, True), (RUNNING, False), (PAUSING, False), (BLOCKED, False), (EXITED, False),
])
def test_child_continue_reaches_the_adapter_only_of_a_stopped_rank(state, forwarded) -> None:
    assert forwards_continue(Rank(state)) is forwarded


def test_one_break_all_cycle_over_a_job() -> None:
    """Rank 2 hits a breakpoint, 0 pauses, 1 is configuring, 3 sits in a collective."""
    job = {r: Rank() for r in range(4)}
    job[2], acts = step(job[2], Stopped("breakpoint", 1.0))
    assert Do.PAUSE_OTHERS in acts
    live = {0: True, 1: False, 3: True}
    for r in pause_targets(job, origin=2):
        job[r], _ = step(job[r], Pause(live=live[r]))
    assert [job[r].state for r in range(4)] == [PAUSING, PAUSING, STOPPED, PAUSING]
    job[0], _ = step(job[0], Stopped("pause", 1.01))
    job[1], acts = step(job[1], SessionConfigured())
    assert acts == sent_pause(1)
    job[1], _ = step(job[1], Stopped("pause", 1.2))
    job[3], _ = step(job[3], PauseOverdue(1, 0))
    job[3], _ = step(job[3], Blocked(1, SUMMARY, STACK))
    assert [job[r].state for r in range(4)] == [STOPPED, STOPPED, STOPPED, BLOCKED]
    # The client continues from rank 3 (never stopped): the hub continues the job itself.
    assert not forwards_continue(job[3])
    targets = continue_targets(job, None)
    out = {}
    for r in range(4):
        job[r], out[r] = step(job[r], Continue(2.0) if r in targets else Resume())
    assert all(Do.DAP_CONTINUE in out[r] for r in (0, 1, 2))
    assert Do.UNPAUSE in out[3] and Do.DAP_CONTINUE not in out[3]
    assert {job[r].state for r in range(4)} == {RUNNING}


# --- what the IDE shows (Ranks view, the root session's thread) ------------------------
@pytest.mark.parametrize(("machine", "shown"), [
    (Rank(), View.RUNNING),
    (Rank(held=True), View.WAITING),
    (Rank(PAUSING), View.PAUSING),
    (Rank(BLOCKED), View.BLOCKED),
    (Rank(STOPPED), View.PAUSED),
    (Rank(STOPPED, post_mortem=PM), View.POST_MORTEM),
    (Rank(post_mortem=PM), View.POST_MORTEM),
    (Rank(EXITED, post_mortem=PM), View.EXITED),
])
def test_view(machine: Rank, shown: View) -> None:
    assert view(machine) is shown


def test_job_summary_and_stopped() -> None:
    assert job_summary(JOB) == "8 ranks: 2 running, 1 pausing, 2 paused, 1 blocked, " \
        "1 waiting, 1 exited"
    assert job_summary({0: Rank(STOPPED, post_mortem=PM), 1: Rank(STOPPED)}) == \
        "2 ranks: 1 paused, 1 post-mortem"
    assert job_summary({0: Rank()}) == "1 rank: 1 running"
    assert job_summary({}) == "0 ranks"
    assert job_stopped(JOB)
    assert not job_stopped({0: Rank(PAUSING), 1: Rank(BLOCKED), 2: Rank()})
