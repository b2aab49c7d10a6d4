"""Utilisation samplers, one per node: NVML for GPUs, process CPU time for CPU-only jobs.

Each sampler takes its data source as a parameter (the ``pynvml`` module, a
``/proc`` reader, a clock), so tests drive it without a GPU and the watcher never
knows which one it holds. A sampler that cannot work says so once and reports itself
unavailable; it never raises out of its constructor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

log = logging.getLogger("fi_dist.idle")


@dataclass(frozen=True)
class DeviceSample:
    """One device's (or one rank process's) utilisation at one moment."""

    name: str
    """``gpu0 GPU-...`` or ``rank 3 pid 123``."""
    utilisation: float
    """Percent busy over the last period (GPU: time a kernel ran; CPU: of one core)."""
    memory_used: int | None = None
    """Bytes of device memory in use (GPUs only)."""
    memory_total: int | None = None
    """Bytes of device memory (GPUs only)."""
    power_w: float | None = None
    """Board power draw in watts (GPUs only)."""


class Sampler(Protocol):
    kind: str
    available: bool

    def sample(self, pids: Mapping[int, int]) -> list[DeviceSample]:
        """Utilisation now; ``pids`` maps this node's ranks to their process ids."""
        ...

    def close(self) -> None: ...


class NvmlSampler:
    """The GPUs this worker may use (CUDA_VISIBLE_DEVICES, indices or UUIDs), through NVML.

    NVML indices follow PCI bus order; CUDA's follow it too when
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (always the case inside a Kubernetes GPU pod, where
    the container sees only its own GPUs and the variable is usually unset).
    """

    kind = "nvml"

    def __init__(self, nvml: ModuleType | Any | None = None, visible: str | None = None) -> None:
        self.available = False
        self.reason = ""
        self.handles: list[tuple[str, Any]] = []
        try:
            self.nvml = nvml if nvml is not None else _import_pynvml()
            self.nvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors
            self.reason = f"{type(exc).__name__}: {exc}"
            log.warning("idle: NVML unavailable (%s); no GPU utilisation on this node",
                        self.reason)
            return
        visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
        try:
            self.handles = self._devices(visible)
        except Exception as exc:
            self.reason = f"cannot open GPUs {visible!r}: {type(exc).__name__}: {exc}"
        if not self.handles:
            self.reason = self.reason or f"no GPU visible (CUDA_VISIBLE_DEVICES={visible!r})"
            log.warning("idle: NVML unavailable (%s)", self.reason)
            self.close()
            return
        self.available = True

    def _devices(self, visible: str | None) -> list[tuple[str, Any]]:
        nv = self.nvml
        if visible is None:
            return [(f"gpu{i}", nv.nvmlDeviceGetHandleByIndex(i))
                    for i in range(nv.nvmlDeviceGetCount())]
        out = []
        for i, token in enumerate(t.strip() for t in visible.split(",") if t.strip()):
            if token.isdigit():
                out.append((f"gpu{i}", nv.nvmlDeviceGetHandleByIndex(int(token))))
            elif token.startswith(("GPU-", "MIG-")):
                out.append((f"gpu{i} {token}", nv.nvmlDeviceGetHandleByUUID(token)))
            else:
                # CUDA stops at the first token it cannot parse; so do we.
                break
        return out

    def sample(self, pids: Mapping[int, int]) -> list[DeviceSample]:
        nv = self.nvml
        out = []
        for name, handle in self.handles:
            util = float(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
            mem_used = mem_total = None
            power = None
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle)
                mem_used, mem_total = int(mem.used), int(mem.total)
            except Exception:  # optional metrics: a board without them is still sampled
                pass
            with contextlib.suppress(Exception):
                power = nv.nvmlDeviceGetPowerUsage(handle) / 1000.0
            out.append(DeviceSample(name, util, mem_used, mem_total, power))
        return out

    def close(self) -> None:
        if self.available or self.handles:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()
        self.available = False


def _import_pynvml() -> ModuleType:
    import pynvml

    return pynvml


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` from /proc, None if it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()  # noqa: SIM115 - one short read
    except OSError:
        return None
    # The command name may hold spaces and parens: fields start after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


class CpuSampler:
    """Each rank process's CPU use, in percent of one core, between two samples."""

    kind = "cpu"

    def __init__(self, read_cpu: Callable[[int], float | None] = proc_cpu_seconds,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.available = True
        self.read_cpu = read_cpu
        self.clock = clock
        self._last: dict[int, tuple[float, float]] = {}

    def sample(self, pids: Mapping[int, int]) -> list[DeviceSample]:
        now = self.clock()
        out = []
        seen: dict[int, tuple[float, float]] = {}
        for rank, pid in sorted(pids.items()):
            cpu = self.read_cpu(pid)
            if cpu is None:
                continue
            seen[pid] = (cpu, now)
            prev = self._last.get(pid)
            # The first sight of a process has no interval yet: it tells nothing.
            if prev is not None and now > prev[1]:
                util = 100.0 * max(cpu - prev[0], 0.0) / (now - prev[1])
                out.append(DeviceSample(f"rank {rank} pid {pid}", util))
        self._last = seen
        return out

    def close(self) -> None:
        self._last.clear()


def make_sampler(kind: str, nvml: Any | None = None) -> Sampler:
    """``nvml``, ``cpu``, or ``auto``: NVML when it sees a GPU, else process CPU time."""
    if kind == "cpu":
        return CpuSampler()
    gpu = NvmlSampler(nvml)
    if gpu.available or kind == "nvml":
        return gpu
    log.info("idle: sampling process CPU time instead")
    return CpuSampler()
