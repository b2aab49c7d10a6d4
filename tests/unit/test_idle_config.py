"""IdleSpec validation, the FI_DIST_IDLE_* round trip, `fi-dist run --idle-*` flags."""

from __future__ import annotations

import pytest

from fi_dist import cli
from fi_dist import env_vars as ev
from fi_dist.contract import idle_from_env, idle_to_env
from fi_dist.errors import ConfigError, InconsistentEnvError
from fi_dist.runtime.idle.config import IDLE_EXIT_CODE
from fi_dist.spec import IdleSpec, JobSpec


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"timeout": 0}, "idle.timeout must be a number of seconds > 0, got 0"),
    ({"interval": -1}, "idle.interval must be a number of seconds > 0, got -1"),
    ({"threshold": 150}, "idle.threshold must be a percent in (0, 100], got 150"),
    ({"interval": 0}, "idle.interval must be a number of seconds > 0, got 0"),
    ({"timeout": -10}, "idle.timeout must be a number of seconds > 0, got -10"),
    ({"sampler": "rocm"}, "idle.sampler must be one of auto, nvml, cpu, got 'rocm'"),
    ({"hang_factor": 1}, "idle.hang_factor must be a number > 1, got 1"),
    ({"webhook": "ftp://x"}, "idle.webhook must be an http(s) URL, got 'ftp://x'"),
    ({"email": "not-an-address"}, "idle.email must be mail addresses"),
    ({"smtp": "mailhost"}, "idle.smtp must be HOST:PORT, got 'mailhost'"),
    ({"warn_lead": -3}, "idle.warn_lead must be a number >= 0, got -3"),
])
def test_bad_idle_spec_names_the_field(kwargs, message):
    with pytest.raises(ConfigError) as info:
        IdleSpec(**kwargs)
    assert message in str(info.value)


def test_unknown_idle_key_in_a_job_spec_is_named():
    with pytest.raises(ConfigError, match="idle: .*'timout'"):
        JobSpec("train.py", idle={"timout": 60})


def test_env_round_trip_and_off_by_default():
    assert idle_to_env(IdleSpec()) == {}
    assert idle_from_env({}) is None
    spec = IdleSpec(enabled=True, timeout=600, threshold=2.5, interval=5, warn_lead=60,
                    dry_run=True, sampler="cpu", hang_factor=4, webhook="http://127.0.0.1:9/x",
                    email="a@b.c, d@e.f", smtp="relay:2525", email_from="me@b.c")
    env = idle_to_env(spec)
    assert env[ev.FI_DIST_IDLE_TIMEOUT] == "600"
    assert env[ev.FI_DIST_IDLE_THRESHOLD] == "2.5"
    assert env[ev.FI_DIST_IDLE_EMAIL] == "a@b.c,d@e.f"
    assert idle_from_env(env) == spec


def test_env_with_a_bad_number_is_a_clear_error():
    with pytest.raises(InconsistentEnvError,
                       match="FI_DIST_IDLE_THRESHOLD='lots' is not a number"):
        idle_from_env({ev.FI_DIST_IDLE_TIMEOUT: "60", ev.FI_DIST_IDLE_THRESHOLD: "lots"})
    with pytest.raises(InconsistentEnvError, match="FI_DIST_IDLE_INTERVAL='-1' must be >= 0"):
        idle_from_env({ev.FI_DIST_IDLE_TIMEOUT: "60", ev.FI_DIST_IDLE_INTERVAL: "-1"})
    with pytest.raises(InconsistentEnvError, match="FI_DIST_IDLE_.*idle.interval"):
        idle_from_env({ev.FI_DIST_IDLE_TIMEOUT: "60", ev.FI_DIST_IDLE_INTERVAL: "0"})


@pytest.mark.parametrize(("timeout", "interval", "sampled", "noted"), [
    (1800, 10, 10, False),      # the defaults
    (30, 10, 10, False),        # exactly a third
    (10, 10, 10 / 3, True),     # --idle-timeout 10 with the default interval (the issue)
    (6, 60, 2, True),           # far over: clamped, not refused
])
def test_an_interval_over_a_third_of_the_window_is_clamped_with_a_message(
        timeout, interval, sampled, noted):
    spec = IdleSpec(enabled=True, timeout=timeout, interval=interval)
    assert spec.sample_interval == pytest.approx(sampled)
    assert spec.interval == interval  # what the user gave stays in the spec (and the env)
    note = spec.interval_note()
    assert (note is not None) is noted
    if noted:
        assert f"interval {interval:g}s is more than a third of the {timeout:g}s window" in note
        assert f"sampling every {sampled:.3g}s" in note


def test_exit_code_is_final_under_restart_policy_exit_code():
    assert 1 < IDLE_EXIT_CODE < 128 and IDLE_EXIT_CODE not in (126, 127)


def _spec(*argv: str) -> JobSpec:
    return cli.spec_from_args(cli.build_parser().parse_args(["run", *argv]))


def test_cli_flags_fill_the_idle_spec(tmp_path):
    script = tmp_path / "t.py"
    script.write_text("")
    assert _spec(str(script)).idle.enabled is False
    spec = _spec("--idle-timeout", "900", "--idle-threshold", "3", "--idle-warn-lead", "120",
                 "--idle-dry-run", "--idle-webhook", "http://127.0.0.1:8/h", "--idle-email",
                 "a@b.c", "--idle-smtp", "127.0.0.1:25", str(script))
    idle = spec.idle
    assert (idle.enabled, idle.timeout, idle.threshold, idle.warn_lead, idle.dry_run) == (
        True, 900.0, 3.0, 120.0, True)
    assert idle.email == ("a@b.c",) and idle.webhook == "http://127.0.0.1:8/h"
    assert _spec("--idle", str(script)).idle.timeout == 1800.0


def test_cli_flags_override_a_config_file_idle_section(tmp_path):
    script = tmp_path / "t.py"
    script.write_text("")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"script: {script}\nidle:\n  enabled: true\n  timeout: 600\n"
                   "  threshold: 2\n")
    idle = _spec("--config", str(cfg), "--idle-timeout", "300").idle
    assert (idle.enabled, idle.timeout, idle.threshold) == (True, 300.0, 2)


def test_dry_run_shows_the_idle_env_on_every_node(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.py").write_text("")
    assert cli.main(["run", "--dry-run", "--nnodes", "2", "--master-port", "0",
                     "--idle-timeout", "60", "--idle-sampler", "cpu", "t.py"]) == 0
    out = capsys.readouterr().out
    assert out.count("FI_DIST_IDLE_TIMEOUT: '60'") == 2
    assert out.count("FI_DIST_IDLE_SAMPLER: cpu") == 2


def test_bad_flag_value_is_reported_by_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.py").write_text("")
    assert cli.main(["run", "--dry-run", "--idle-threshold", "0", "t.py"]) == 2
    assert "idle.threshold must be a percent" in capsys.readouterr().err
