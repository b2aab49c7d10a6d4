"""The launcher -> runtime contract: one builder, one reader, exact round trips."""

from __future__ import annotations

import pytest

from fi_dist import env_vars as ev
from fi_dist.contract import (
    DEFAULT_PG_TIMEOUT,
    DebugSettings,
    JobContract,
    LauncherKind,
    rank_port_for,
    seconds,
)
from fi_dist.errors import ConfigError, InconsistentEnvError
from fi_dist.spec import DebugSpec, IdleSpec, JobSpec


def full_spec(**extra) -> JobSpec:
    return JobSpec(script="train.py", nnodes=2, nproc_per_node=2, grace_period=12.5,
                   checkpoint_uri="s3://bucket/run", env={"NCCL_DEBUG": "WARN", "A_B": "x=y,z"},
                   debug=DebugSpec(enabled=True, port=6000, wait_for_client=True,
                                   post_mortem_wait=30, trace="eager"),
                   idle=IdleSpec(enabled=True, timeout=600, interval=5, email="a@b.c"),
                   max_restarts=3, hang_doctor=False, **extra)


@pytest.mark.parametrize("launcher", list(LauncherKind))
@pytest.mark.parametrize("spec", [JobSpec(script="t.py"), full_spec()], ids=["plain", "full"])
def test_round_trip_per_launcher(launcher: LauncherKind, spec: JobSpec) -> None:
    job = JobContract.from_spec(spec, launcher, run_id="run-1", run_dir="/tmp/run-1",
                                rank_port=41000 if spec.debug.enabled else None)
    job = job.replace(attempt=2)
    env = job.to_env()
    assert JobContract.from_env(env) == job
    # Every variable the contract writes is named in env_vars.py (no stray literals).
    named = {v for k, v in vars(ev).items() if k.isupper() and isinstance(v, str)}
    assert set(env) - set(spec.env) <= named


def test_the_kubernetes_way_round_trips_too() -> None:
    from fi_dist.k8s import operator, pytorchjob

    spec = full_spec(image="img:1", name="train")
    docs = pytorchjob.documents(spec, token="t" * 32)
    pod, env = operator.pod_envs(docs, lambda pod: "10.0.0.7")[1]
    assert JobContract.from_env(env) == pytorchjob.job_contract(spec, token="t" * 32)
    assert env[ev.FI_DIST_NODE_ADDR] == "10.0.0.7"


def test_defaults_come_from_the_spec_and_numbers_are_exact() -> None:
    job = JobContract.from_env({})
    assert job.launcher is LauncherKind.SINGLE and job.debug is None and job.idle is None
    assert job.grace_period == JobSpec(script="t").grace_period == 30.0
    debug = DebugSettings(token="x")
    assert (debug.ide_host, debug.ide_port, debug.trace) == ("127.0.0.1", 5678, "lazy")
    assert debug.pg_timeout == DEFAULT_PG_TIMEOUT
    assert seconds(30.0) == "30" and seconds(0.1) == "0.1" and float(seconds(1 / 3)) == 1 / 3


def test_rank_port_is_the_ide_port_plus_one_unless_given() -> None:
    assert rank_port_for(5678) == 5679 and rank_port_for(0) == 0
    assert DebugSettings(token="x", ide_port=6000).hub_rank_port == 6001
    assert DebugSettings(token="x", ide_port=6000, rank_port=7000).hub_rank_port == 7000
    env = DebugSettings(token="x", ide_port=6000).to_env()
    assert env[ev.FI_DIST_DEBUG_RANK_PORT] == "6001"
    assert DebugSettings.from_env(env) == DebugSettings(token="x", ide_port=6000)


def test_a_token_is_made_once_per_job() -> None:
    spec = JobSpec(script="t.py", debug=DebugSpec(enabled=True))
    a = JobContract.from_spec(spec, "local")
    b = JobContract.from_spec(spec, "local")
    assert a.debug and b.debug and len(a.debug.token) == 32 and a.debug.token != b.debug.token
    assert JobContract.from_spec(spec, "local", token="given").debug.token == "given"


@pytest.mark.parametrize(("env", "message"), [
    ({ev.FI_DIST_LAUNCHER: "slurm"}, "FI_DIST_LAUNCHER='slurm' is not one of local"),
    ({ev.FI_DIST_GRACE_PERIOD: "soon"}, "FI_DIST_GRACE_PERIOD='soon' is not a number"),
    ({ev.FI_DIST_GRACE_PERIOD: "-1"}, "FI_DIST_GRACE_PERIOD='-1' must be >= 0"),
    ({ev.FI_DIST_ATTEMPT: "first"}, "FI_DIST_ATTEMPT='first' is not an integer"),
    ({ev.FI_DIST_DEBUG: "1"}, "FI_DIST_DEBUG=1 but FI_DIST_DEBUG_TOKEN is unset"),
    ({ev.FI_DIST_DEBUG: "maybe"}, "FI_DIST_DEBUG='maybe' is not a boolean"),
    ({ev.FI_DIST_DEBUG: "1", ev.FI_DIST_DEBUG_TOKEN: "t", ev.FI_DIST_DEBUG_PORT: "70000"},
     "FI_DIST_DEBUG_PORT=70000 is not a port"),
    ({ev.FI_DIST_DEBUG: "1", ev.FI_DIST_DEBUG_TOKEN: "t", ev.FI_DIST_DEBUG_TRACE: "often"},
     "FI_DIST_DEBUG_TRACE='often'"),
    ({ev.FI_DIST_IDLE_TIMEOUT: "60", ev.FI_DIST_IDLE_THRESHOLD: "lots"},
     "FI_DIST_IDLE_THRESHOLD='lots' is not a number"),
])
def test_bad_env_names_the_variable_and_value(env: dict[str, str], message: str) -> None:
    with pytest.raises(InconsistentEnvError) as info:
        JobContract.from_env(env)
    assert message in str(info.value)


def test_bad_user_env_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="'BAD NAME' is not a valid environment variable"):
        JobContract.from_spec(JobSpec(script="t.py", env={"BAD NAME": "1"}), "local")


def test_trace_mode_is_lazy_by_default_and_checked() -> None:
    with pytest.raises(ConfigError, match="debug.trace must be 'lazy' or 'eager', got 'often'"):
        DebugSpec(enabled=True, trace="often")
    base = {ev.FI_DIST_DEBUG: "1", ev.FI_DIST_DEBUG_TOKEN: "t"}
    assert DebugSettings.from_env(base).trace == "lazy"
    assert DebugSettings.from_env({**base, ev.FI_DIST_DEBUG_TRACE: "Eager"}).trace == "eager"
