"""Checkpointer in one process: resume, preemption exit, torn / corrupt checkpoints, retention."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fi_dist import contract
from fi_dist.errors import ConfigError, InconsistentEnvError
from fi_dist.runtime.checkpoint import CheckpointConfig, Checkpointer, layout
from fi_dist.runtime.checkpoint.config import grace_from_env
from fi_dist.runtime.checkpoint.storage import Storage


class Job:
    """A tiny training job whose every step draws from python, numpy and torch RNGs."""

    def __init__(self, ckpt_dir: Path, **options: object) -> None:
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                         torch.nn.Linear(16, 1))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=4, gamma=0.5)
        self.ck = Checkpointer(str(ckpt_dir), model=self.model, optimizer=self.opt,
                               scheduler=self.sched, **options)

    def step(self) -> None:
        x = torch.randn(4, 8) + float(np.random.rand()) + random.random()
        loss = self.model(x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()

    def run(self, total: int, sigterm_at: int | None = None) -> None:
        try:
            for step in self.ck.steps(total):
                self.step()
                if step == sigterm_at:
                    os.kill(os.getpid(), signal.SIGTERM)
        finally:
            self.ck.close()

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]


@pytest.fixture(autouse=True)
def _seeded():
    random.seed(1)
    np.random.seed(1)
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def _steps(d: Path) -> list[int]:
    return sorted(s for s in (layout.parse_step(p.name) for p in d.iterdir()) if s is not None)


def test_preempt_then_resume_is_bit_exact(tmp_path: Path) -> None:
    ref = Job(tmp_path / "ref", every=3)
    ref.run(10)
    expected = ref.params()

    random.seed(1)
    np.random.seed(1)
    first = Job(tmp_path / "run", every=3)
    with pytest.raises(SystemExit) as exc:
        first.run(10, sigterm_at=4)
    assert exc.value.code == 143
    assert _steps(tmp_path / "run") == [3, 5]  # periodic 3, then the preemption save at 5

    # A new process would start with other RNG states: scramble them.
    random.seed(99)
    np.random.seed(99)
    second = Job(tmp_path / "run", every=3)
    assert second.ck.resume() == 5
    second.run(10)
    for a, b in zip(expected, second.params(), strict=True):
        assert torch.equal(a, b)
    assert second.sched.state_dict() == ref.sched.state_dict()


def test_torn_and_temporary_directories_are_never_loaded(tmp_path: Path) -> None:
    Job(tmp_path, every=2, keep_last=5).run(4)
    torn = tmp_path / layout.step_dirname(8)
    torn.mkdir()
    (torn / "model.pt").write_bytes(b"half")
    tmp = tmp_path / f"{layout.TMP_PREFIX}{layout.step_dirname(6)}-abc"
    tmp.mkdir()
    (tmp / "model.pt").write_bytes(b"partial")
    job = Job(tmp_path, every=2, keep_last=5)
    assert job.ck.resume() == 4
    assert not tmp.exists()  # leftovers of a killed save are removed at start
    job.ck.close()


def test_corrupt_file_is_named_and_previous_checkpoint_used(tmp_path: Path, caplog) -> None:
    Job(tmp_path, every=2, keep_last=5).run(6)
    victim = tmp_path / layout.step_dirname(6) / "optimizer.safetensors"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes: only the checksum sees it
    victim.write_bytes(bytes(data))
    job = Job(tmp_path, every=2, keep_last=5)
    with caplog.at_level(logging.ERROR, logger="fi_dist.checkpoint"):
        assert job.ck.resume() == 4
    assert str(victim) in caplog.text and "checksum mismatch" in caplog.text
    job.ck.close()


def test_size_mismatch_and_bad_manifest_are_rejected(tmp_path: Path) -> None:
    Job(tmp_path, every=2, keep_last=5).run(6)
    (tmp_path / layout.step_dirname(6) / "model.safetensors").write_bytes(b"short")
    manifest = tmp_path / layout.step_dirname(4) / layout.MANIFEST
    manifest.write_text(manifest.read_text().replace('"step": 4', '"step": 40'))
    complete, rejected = layout.scan(Storage(str(tmp_path)))
    assert [c.step for c in complete] == [2]
    reasons = " ".join(why for _, why in rejected)
    assert "size 5 but the manifest says" in reasons
    assert "manifest checksum mismatch" in reasons


def test_every_checkpoint_corrupt_is_a_clear_error(tmp_path: Path) -> None:
    Job(tmp_path, every=2, keep_last=1).run(2)
    f = tmp_path / layout.step_dirname(2) / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 1
    f.write_bytes(bytes(data))
    job = Job(tmp_path, every=2)
    with pytest.raises(layout.CheckpointCorruptError, match="model.safetensors"):
        job.ck.resume()
    job.ck.close()


def test_keep_last_counts_only_complete_checkpoints(tmp_path: Path) -> None:
    torn = tmp_path / layout.step_dirname(100)  # newest by name, but no manifest
    torn.mkdir(parents=True)
    Job(tmp_path, every=1, keep_last=2).run(6)
    assert _steps(tmp_path) == [5, 6, 100]  # step-100 is not counted as one of the two
    complete, _ = layout.scan(Storage(str(tmp_path)))
    assert [c.step for c in complete] == [6, 5]


def test_sync_save_and_manual_maybe_save(tmp_path: Path) -> None:
    job = Job(tmp_path, every=5, async_save=False)
    assert job.ck.resume() == 0
    assert not job.ck.maybe_save(3)
    assert job.ck.maybe_save(5)
    m = layout.read_manifest(job.ck.storage, str(tmp_path / layout.step_dirname(5)))
    assert set(m.files) == {"model.safetensors", "optimizer.safetensors", "scheduler.safetensors",
                            "rank-00000.safetensors"}
    assert m.meta["reason"] == "periodic" and m.world_size == 1
    job.ck.close()


def _save_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fi-dist-save"]


def test_async_saves_share_one_writer_thread_that_close_ends(tmp_path: Path) -> None:
    # Threads of other tests' checkpointers may still be ending: only this job's count.
    before = set(_save_threads())
    job = Job(tmp_path, keep_last=2)
    job.ck.resume()
    seen: set[threading.Thread] = set()
    for step in (1, 2, 3):
        job.step()
        job.ck.save(step, block=False)
        seen |= set(_save_threads()) - before
        assert job.ck.stall_seconds is not None and job.ck.stall_seconds > 0
    job.ck.finish()
    assert _steps(tmp_path) == [2, 3]
    assert len(seen) == 1  # one thread served all three saves
    job.ck.close()
    (writer,) = seen
    writer.join(timeout=10)
    assert not writer.is_alive()


def test_deadline_warning_when_a_save_would_not_fit(tmp_path: Path, caplog) -> None:
    job = Job(tmp_path, every=1, grace_period=0.0)
    with caplog.at_level(logging.WARNING, logger="fi_dist.checkpoint"):
        job.run(3)
    assert "exceeds the 0.0 s grace period" in caplog.text


def test_config_validation_names_the_field(monkeypatch) -> None:
    with pytest.raises(ConfigError, match="every"):
        CheckpointConfig(every=-1)
    with pytest.raises(ConfigError, match="keep_last"):
        CheckpointConfig(keep_last=0)
    with pytest.raises(ConfigError, match="grace_period"):
        CheckpointConfig(grace_period=-2)
    monkeypatch.setenv("FI_DIST_GRACE_PERIOD", "12.5")
    contract.reset_current()
    assert CheckpointConfig().grace_period == 12.5
    contract.reset_current()
    monkeypatch.setenv("FI_DIST_GRACE_PERIOD", "soon")
    with pytest.raises(InconsistentEnvError, match="FI_DIST_GRACE_PERIOD='soon'"):
        grace_from_env()
    monkeypatch.delenv("FI_DIST_GRACE_PERIOD")
    contract.reset_current()
    assert grace_from_env() == 30.0


def test_bad_signal_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SIGNOPE"):
        Job(tmp_path, signals=("SIGNOPE",))
    with pytest.raises(ValueError, match="SIGKILL"):
        Job(tmp_path, signals=("SIGKILL",))


def test_sigusr1_configured_as_preemption(tmp_path: Path) -> None:
    job = Job(tmp_path, signals=("SIGUSR1",))
    with pytest.raises(SystemExit):
        for step in job.ck.steps(5):
            job.step()
            if step == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
    assert _steps(tmp_path) == [2]

