"""The pure parts of --network netns: liveness, fault state, shaping rules, names, flags."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fi_dist import env_vars as ev
from fi_dist.cli import build_parser, spec_from_args
from fi_dist.contract import JobContract, heartbeat_message, parse_heartbeat
from fi_dist.errors import ConfigError, InconsistentEnvError
from fi_dist.launcher import Fault
from fi_dist.launchers import netns
from fi_dist.launchers.chaos import NodeFaults, fault_from_dict, fault_to_dict
from fi_dist.launchers.local import NETNS_MASTER_PORT, LocalLauncher
from fi_dist.launchers.netem import Shape, dropped, netem_missing, release_at
from fi_dist.launchers.node_liveness import Change, Liveness, NodeState
from fi_dist.rundir import RunDir
from fi_dist.spec import DebugSpec, JobSpec
from fi_dist.summary import format_summary, summarize

R, U, L = NodeState.REACHABLE, NodeState.UNREACHABLE, NodeState.LOST


# --- liveness: beats in, states out ---------------------------------------------------------
@pytest.mark.parametrize(("timeout", "beats", "at", "changes"), [
    # silent 1 s: nothing yet; 2 s: unreachable; 10 s: lost
    (10, {}, 1.0, []),
    (10, {}, 2.0, [Change(0, U, 2.0), Change(1, U, 2.0)]),
    (10, {1: 9.0}, 10.0, [Change(0, L, 10.0)]),
    # a node that beats is left alone; a timeout of 0 never loses a node
    (0, {1: 99.0}, 100.0, [Change(0, U, 100.0)]),
    # a timeout shorter than the suspicion delay: straight to lost
    (1.5, {}, 1.5, [Change(0, L, 1.5), Change(1, L, 1.5)]),
])
def test_liveness_table(timeout, beats, at, changes):
    live = Liveness(timeout)
    live.start([0, 1], now=0.0)
    for node, t in beats.items():
        live.beat(node, t)
    assert live.check(at) == changes


def test_liveness_recovers_loses_for_good_and_forgets_exited_nodes():
    live = Liveness(10)
    live.start([0, 1], 0.0)
    assert live.check(3.0) == [Change(0, U, 3.0), Change(1, U, 3.0)]
    live.beat(0, 3.5)
    assert live.check(4.0) == [Change(0, R, 0.5)]
    live.beat(0, 10.5)
    assert live.check(11.0) == [Change(1, L, 11.0)]
    live.beat(1, 11.5)  # too late: lost is final for the attempt
    assert live.check(12.0) == [] and live.state[1] is L
    live.forget(0)  # its agent exited: silence means nothing
    assert live.check(100.0) == [] and 0 not in live.state
    live.start([0, 1], 200.0)  # a new attempt starts clean
    assert live.state == {0: R, 1: R}


def test_heartbeat_datagrams_round_trip_and_junk_is_ignored():
    assert parse_heartbeat(heartbeat_message("run-1", 3, 2, 17)) == ("run-1", 3, 2)
    for junk in (b"", b"\xff\xfe", b"fi-dist-hb run 1", b"other run 1 0 0", b"fi-dist-hb r x 0 0"):
        assert parse_heartbeat(junk) is None


# --- faults ----------------------------------------------------------------------------------
def test_faults_accumulate_and_heal_clears_them():
    f = NodeFaults()
    f = f.apply(Fault("delay", ms=5, jitter_ms=1))
    f = f.apply(Fault("loss", pct=2))
    f = f.apply(Fault("partition"))
    assert f == NodeFaults(True, Shape(5, 1, 2))
    assert f.describe() == "partitioned, delay 5 ms +- 1 ms, loss 2%"
    assert f.apply(Fault("delay", ms=0)).shape == Shape(0, 0, 2)
    assert f.apply(Fault("heal")) == NodeFaults() and NodeFaults().describe() == "no faults"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"kind": "melt"}, "fault must be one of partition, heal, delay, loss"),
    ({"kind": "delay", "ms": -1}, "delay must be 0..60000 ms"),
    ({"kind": "delay", "ms": 5, "jitter_ms": 1e6}, "delay must be 0..60000 ms"),
    ({"kind": "loss", "pct": 101}, "loss must be a percent in 0..100"),
])
def test_bad_faults_name_the_problem(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Fault(**kwargs)


def test_faults_cross_the_control_socket_unchanged():
    for f in (Fault("partition"), Fault("delay", 2.5, 0.5), Fault("loss", pct=7)):
        assert fault_from_dict(fault_to_dict(f)) == f
    assert Fault("delay", 5, 1).describe() == "delay 5 ms +- 1 ms"


def test_chaos_command_line():
    p = build_parser()
    a = p.parse_args(["chaos", "--node", "1", "delay", "5", "--jitter", "2"])
    assert (a.node, a.fault, a.ms, a.jitter) == (1, "delay", 5.0, 2.0)
    assert p.parse_args(["chaos", "--node", "0", "loss", "10"]).pct == 10.0
    assert p.parse_args(["chaos", "--node", "2", "heal"]).fault == "heal"
    with pytest.raises(SystemExit):
        p.parse_args(["chaos", "partition"])  # --node is required


# --- shaping rules ------------------------------------------------------------------------------
def test_release_time_is_delay_plus_jitter_and_keeps_order():
    shape = Shape(delay_ms=5, jitter_ms=2)
    assert release_at(10.0, shape, 0.0, lambda: 0.5) == pytest.approx(10.005)
    assert release_at(10.0, shape, 0.0, lambda: 1.0) == pytest.approx(10.007)
    assert release_at(10.0, shape, 0.0, lambda: 0.0) == pytest.approx(10.003)
    # a packet never overtakes the one before it (TCP sees jitter, not reordering)
    assert release_at(10.0, shape, 10.0069, lambda: 0.0) == 10.0069
    assert release_at(1.0, Shape(delay_ms=1, jitter_ms=5), 0.0, lambda: 0.0) == 1.0


def test_loss_drops_the_given_share():
    draws = iter(i / 1000 for i in range(1000))
    lost = sum(dropped(Shape(loss_pct=10), lambda: next(draws)) for _ in range(1000))
    assert lost == 100
    assert not dropped(Shape(delay_ms=5), lambda: 0.0)
    assert Shape(5, 1, 2).netem_args() == ["delay", "5ms", "1ms", "loss", "2%"]
    assert netem_missing("Error: Specified qdisc kind is unknown.")
    assert not netem_missing("RTNETLINK answers: Operation not permitted")


# --- names, addresses, privileges ----------------------------------------------------------------
def test_hosts_file_names_every_pod_also_by_its_mapped_address():
    text = netns.hosts_text(["j-master-0", "j-worker-0"])
    assert "10.244.0.2\tj-master-0" in text and "10.244.0.3\tj-worker-0" in text
    assert "::ffff:10.244.0.3\tj-worker-0" in text and "127.0.0.1\tlocalhost" in text
    assert netns.node_addr(0) == "10.244.0.2" and netns.CONTROL_ADDR == "10.244.0.1"


def test_missing_privileges_and_tools_are_named():
    full = 1 << 21 | 1 << 12
    assert netns.missing(full, lambda c: "/usr/sbin/" + c, "linux") == []
    lacks = netns.missing(0, lambda c: None, "linux")
    assert "CAP_SYS_ADMIN and CAP_NET_ADMIN" in lacks[0]
    assert any("apt-get install iproute2" in m for m in lacks)
    assert any("util-linux" in m for m in lacks)
    assert netns.missing(full, lambda c: c, "darwin")[0].startswith("Linux network namespaces")


# --- spec, contract, dry run -------------------------------------------------------------------------
def test_network_flags_reach_the_spec_and_are_checked():
    p = build_parser()
    spec = spec_from_args(p.parse_args(["run", "--network", "netns", "--node-timeout", "10",
                                        "t.py"]))
    assert (spec.network, spec.node_timeout) == ("netns", 10.0)
    assert JobSpec(script="t.py").network == "loopback"
    with pytest.raises(ConfigError, match="network must be one of loopback, netns"):
        JobSpec(script="t.py", network="vxlan")
    with pytest.raises(ConfigError, match="'netns' is a mode of the local launcher"):
        JobSpec(script="t.py", network="netns", launcher="ray")
    with pytest.raises(ConfigError, match="node_timeout must be 0"):
        JobSpec(script="t.py", node_timeout=1)


def test_contract_carries_the_network_settings_both_ways():
    job = JobContract.from_spec(JobSpec(script="t.py", network="netns"), "local", run_id="r")
    job = job.replace(heartbeat="10.244.0.1:4000", lifeline_fd=7, owner="123:456")
    env = job.to_env()
    assert env[ev.FI_DIST_NETWORK] == "netns" and env[ev.FI_DIST_LIFELINE_FD] == "7"
    assert JobContract.from_env(env) == job
    assert ev.FI_DIST_NETWORK not in JobContract.from_spec(JobSpec(script="t.py"), "local").to_env()
    with pytest.raises(InconsistentEnvError, match="FI_DIST_NETWORK='wifi'"):
        JobContract.from_env({ev.FI_DIST_NETWORK: "wifi"})


def test_netns_dry_run_is_the_operator_pod_env_on_pod_addresses(tmp_path: Path):
    script = tmp_path / "t.py"
    script.write_text("")
    spec = JobSpec(script=str(script), name="train", nnodes=3, master_port=0,
                   network="netns", debug=DebugSpec(enabled=True, port=0))
    dry = LocalLauncher(tmp_path).dryrun(spec)
    docs = dry.documents
    assert [d["hostname"] for d in docs] == ["train-master-0", "train-worker-0",
                                             "train-worker-1"]
    assert [d["addr"] for d in docs] == ["10.244.0.2", "10.244.0.3", "10.244.0.4"]
    for d in docs:
        assert d["env"][ev.MASTER_ADDR] == d["env"][ev.PET_MASTER_ADDR] == "train-master-0"
        assert d["env"][ev.MASTER_PORT] == "29500" and d["network"] == "netns"
        assert d["env"][ev.FI_DIST_NODE_ADDR] == d["addr"]
    # the hub's port is fixed up front: the host forwards that same number
    assert dry.request.job.debug.ide_port > 0


def test_a_lost_node_is_the_root_cause_and_faults_are_listed(tmp_path: Path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    t = time.time()
    run.record_node_lost(1, t - 10, 10.0)
    run.write_rank(0, node=0, state="failed", exitcode=1, error="RuntimeError: gloo", ended=t)
    run.record_fault({"time": t - 12, "node": 1, "attempt": 0, "fault": "partition",
                      "now": "partitioned", "mechanism": "switch port p1 down"})
    summary = summarize(run, 2, 1, {0: 1, 1: 137})
    assert summary.root_cause is not None and summary.root_cause.label == "node 1"
    assert summary.exitcode == 137 and "unreachable for 10s" in summary.root_cause.message
    text = format_summary(summary)
    assert "network faults injected (fi-dist chaos):" in text
    assert "node 1: partition -> partitioned (attempt 0, switch port p1 down)" in text


def test_netns_dry_run_picks_a_code_server_port_and_keeps_the_master_port(tmp_path: Path):
    # The host forwards code-server's port number to node 0: it must be known (0 -> a free
    # one) and must not change the rendezvous port the nodes get.
    spec = JobSpec(script=str(Path(__file__)), network="netns", nnodes=2,
                   debug=DebugSpec(enabled=True, port=0, code_server=True, code_server_port=0))
    req = LocalLauncher(tmp_path).dryrun(spec).request
    assert req.job.debug.code_server_port > 0
    assert req.master_port == NETNS_MASTER_PORT != req.job.debug.code_server_port
    assert {n.env["MASTER_PORT"] for n in req.nodes} == {str(NETNS_MASTER_PORT)}
