"""Pre-authentication limits and the rank-port handshake, as pure functions."""

from __future__ import annotations

import logging

import pytest

from fi_dist.runtime.debug import handshake
from fi_dist.runtime.debug.guard import Pending, Refusals


def test_full_slots_evict_the_oldest_connection_that_said_nothing() -> None:
    closed: list[str] = []
    pending = Pending(limit=3)
    for name in ("a", "b", "c"):
        assert not pending.admit(name, lambda n=name: closed.append(n))
    pending.progress("a")  # a sent a complete message: kept over the idle ones
    assert pending.admit("d", lambda: closed.append("d"))
    assert closed == ["b"] and pending.count == 3
    pending.progress("c")
    pending.progress("d")
    assert pending.admit("e", lambda: closed.append("e"))  # all spoke: the oldest goes
    assert closed == ["b", "a"]
    pending.release("c")
    assert not pending.admit("f", lambda: None) and pending.count == 3


def test_refusals_are_folded_into_a_line_a_second(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    refusals = Refusals(logging.getLogger("guard-test"), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="guard-test"):
        for _ in range(50):
            refusals.note("IDE port", "closed x")
        now[0] += 1.5
        refusals.note("IDE port", "closed y")
        refusals.note("rank port", "refused z")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["IDE port: closed x",
                     "IDE port: closed y (and 49 more like it since the last line)",
                     "rank port: refused z"]


def test_handshake_proves_the_token_both_ways_without_sending_it() -> None:
    ask = handshake.challenge()
    hello = handshake.rank_hello("secret", ask["challenge"], kind="control", rank=3, node=1)
    assert "secret" not in repr(hello)
    assert handshake.check_rank("secret", ask["challenge"], hello)
    proof = handshake.hub_proof("secret", ask["challenge"], hello)
    assert handshake.check_hub("secret", ask["challenge"], hello, proof)


@pytest.mark.parametrize("tamper", ["token", "challenge", "field", "replay", "shape"])
def test_handshake_refuses_what_does_not_prove_the_token(tamper: str) -> None:
    ask = handshake.challenge()
    hello = handshake.rank_hello("secret", ask["challenge"], kind="control", rank=3)
    if tamper == "token":
        hello = handshake.rank_hello("guess", ask["challenge"], kind="control", rank=3)
    elif tamper == "challenge":  # an answer to another hub's challenge (a captured one)
        hello = handshake.rank_hello("secret", handshake.new_nonce(), kind="control", rank=3)
    elif tamper == "field":  # the rank number changed in transit
        hello = {**hello, "rank": 0}
    elif tamper == "replay":  # a captured hello sent against a fresh challenge
        ask = handshake.challenge()
    elif tamper == "shape":
        hello = {"rank": 3, "nonce": 5, "mac": None}
    assert not handshake.check_rank("secret", ask["challenge"], hello)


def test_a_rank_refuses_a_hub_that_cannot_prove_the_token() -> None:
    ask = handshake.challenge()
    hello = handshake.rank_hello("secret", ask["challenge"], kind="control", rank=0)
    assert not handshake.check_hub("secret", ask["challenge"], hello, {"ok": True, "mac": "0"})
    assert not handshake.check_hub("secret", ask["challenge"], hello,
                                   handshake.hub_proof("guess", ask["challenge"], hello))
    assert not handshake.check_hub("secret", ask["challenge"], hello, None)


def test_an_agent_whose_hub_is_gone_stops_redialling_and_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from fi_dist.runtime.debug import agent
    from fi_dist.runtime.environment import RankEnvironment

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(agent, "REDIAL_LIMIT", 0.5)
    env = RankEnvironment.from_env({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0",
                                    "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "1",
                                    "TORCHELASTIC_RUN_ID": "t"})
    rank_agent = agent.RankAgent(env, ("127.0.0.1", port), "tok", link=None)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="fi_dist.debug.agent"):
        rank_agent.run()  # returns: it gave up
    assert rank_agent.gave_up.is_set()
    assert any("gave up reaching the debug hub" in r.getMessage() for r in caplog.records)
