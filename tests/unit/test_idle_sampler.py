"""Samplers: NVML with an injected module (no GPU here), the real NVML's absence, CPU time."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from fi_dist.runtime.idle.sampler import CpuSampler, NvmlSampler, make_sampler


class FakeNvml:
    """An injected NVML data source: three boards with fixed readings."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.boards = {
            0: ("GPU-aaa", 0, 40 << 30, 80 << 30, 71_000),
            1: ("GPU-bbb", 97, 70 << 30, 80 << 30, 690_000),
            2: ("GPU-ccc", 3, 1 << 30, 80 << 30, None),
        }
        self.shutdown = 0

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdown += 1

    def nvmlDeviceGetCount(self):
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, i):
        if i not in self.boards:
            raise self.NVMLError(f"Invalid Argument {i}")
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for i, board in self.boards.items():
            if board[0] == uuid:
                return i
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self.boards[h][1], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=self.boards[h][2], total=self.boards[h][3])

    def nvmlDeviceGetPowerUsage(self, h):
        if self.boards[h][4] is None:
            raise self.NVMLError("Not Supported")
        return self.boards[h][4]


def test_nvml_all_devices_when_cuda_visible_devices_is_unset():
    s = NvmlSampler(FakeNvml(), visible=None)
    out = s.sample({})
    assert s.available
    assert [d.utilisation for d in out] == [0.0, 97.0, 3.0]
    assert out[1].power_w == pytest.approx(690.0)
    assert out[1].memory_used == 70 << 30
    assert out[2].power_w is None  # a board without power readings is still sampled


@pytest.mark.parametrize(("visible", "expected"), [
    ("1", [97.0]),
    ("2,0", [3.0, 0.0]),
    ("GPU-bbb,GPU-ccc", [97.0, 3.0]),
    ("0,foo,1", [0.0]),  # CUDA stops at the first token it cannot parse
])
def test_nvml_only_the_gpus_this_worker_uses(visible, expected):
    assert [d.utilisation for d in NvmlSampler(FakeNvml(), visible).sample({})] == expected


@pytest.mark.parametrize(("nvml", "visible", "reason"), [
    (FakeNvml(fail_init=True), None, "Driver Not Loaded"),
    (FakeNvml(), "", "no GPU visible"),
    (FakeNvml(), "GPU-zzz", "cannot open GPUs"),
])
def test_nvml_unavailable_says_so_in_one_line(nvml, visible, reason, caplog):
    with caplog.at_level(logging.WARNING, logger="fi_dist.idle"):
        s = NvmlSampler(nvml, visible)
    assert not s.available
    assert reason in s.reason
    lines = [r for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert len(lines) == 1
    assert s.sample({}) == []


def test_real_nvml_on_this_machine_degrades_to_cpu(caplog):
    # No GPU driver here: the real pynvml fails to load its library.
    with caplog.at_level(logging.INFO, logger="fi_dist.idle"):
        s = make_sampler("auto")
    assert isinstance(s, CpuSampler)
    assert sum("NVML unavailable" in r.getMessage() for r in caplog.records) == 1
    forced = make_sampler("nvml")
    assert forced.kind == "nvml" and not forced.available and forced.sample({0: 1}) == []


def test_cpu_sampler_with_injected_source_and_vanished_pid():
    times = {10: 1.0, 11: 5.0}
    clock = iter([100.0, 102.0])
    s = CpuSampler(read_cpu=times.get, clock=lambda: next(clock))
    s.sample({0: 10, 1: 11})
    times[10] = 2.0  # 1 s of CPU in 2 s of wall: 50 %
    del times[11]
    out = s.sample({0: 10, 1: 11})
    assert [(d.name, d.utilisation) for d in out] == [("rank 0 pid 10", 50.0)]
