"""Host staging: the copy of the state an async save writes while the loop goes on.

The copy is the only part of an async save that stalls the training loop. Buffers are
kept from one save to the next (keyed by position in the state), because a fresh copy of
a large state faults in every page of new memory, which costs more than the copy itself.

Device tensors (CUDA) are staged into *pinned* host buffers with non-blocking copies,
synchronised once at the end: the stall is the device-to-host transfer and nothing
else. Without CUDA (or where pinning fails) the same code uses ordinary host memory.
Safe to reuse because at most one save is in flight and a new snapshot waits for it.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

log = logging.getLogger("fi_dist.checkpoint")

_IMMUTABLE = (bool, int, float, complex, str, bytes)


class HostStaging:
    """Reused host buffers for snapshots of (nested) state."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[Any, ...], torch.Tensor] = {}
        self._pin = True
        self._devices: set[torch.device] = set()

    def snapshot(self, obj: Any, key: tuple[Any, ...] = (), copy_host: bool = True) -> Any:
        """A copy of ``obj`` whose tensors live in host memory, detached from training.

        Args:
            obj: a state dict (nested dicts, lists, tuples, tensors, plain values).
            key: where ``obj`` sits in the whole state (keys the reused buffers).
            copy_host: also copy tensors already in host memory. A blocking save passes
                False: the loop is stopped anyway, so host tensors are written in place
                and only device tensors are brought over.

        Call :meth:`sync` before reading the result (device copies are asynchronous).
        """
        if obj is None or type(obj) in _IMMUTABLE:
            return obj
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            if t.device.type == "cpu" and not copy_host:
                return t
            return self._copy(key, t)
        if isinstance(obj, dict):
            items = [(k, self.snapshot(v, (*key, k), copy_host)) for k, v in obj.items()]
            out = dict(items) if type(obj) is dict else type(obj)(items)
            meta = getattr(obj, "_metadata", None)
            if meta is not None:  # state_dict() makes a new one per call: share it
                out._metadata = meta  # type: ignore[attr-defined]
            return out
        if isinstance(obj, list | tuple):
            if all(v is None or type(v) in _IMMUTABLE for v in obj):
                return list(obj) if isinstance(obj, list) else obj  # python's RNG: 625 ints
            vals = [self.snapshot(v, (*key, i), copy_host) for i, v in enumerate(obj)]
            return vals if isinstance(obj, list) else tuple(vals)
        return copy.deepcopy(obj)

    def _copy(self, key: tuple[Any, ...], t: torch.Tensor) -> torch.Tensor:
        if t.is_sparse or t.layout != torch.strided:
            return t.to("cpu", copy=True)
        device = t.device.type != "cpu"
        buf = self._bufs.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = self._alloc(t, pinned=device)
            self._bufs[key] = buf
        if device:
            buf.copy_(t, non_blocking=buf.is_pinned())
            self._devices.add(t.device)
        else:
            buf.copy_(t)
        return buf

    def _alloc(self, t: torch.Tensor, pinned: bool) -> torch.Tensor:
        if pinned and self._pin:
            try:
                return torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            except RuntimeError as exc:  # no CUDA driver, pinned memory exhausted ...
                self._pin = False
                log.warning("checkpoint staging: pinned host memory unavailable (%s); "
                            "using pageable memory", exc)
        return torch.empty(t.shape, dtype=t.dtype)

    def sync(self) -> None:
        """Wait for the device-to-host copies started by :meth:`snapshot`."""
        for device in self._devices:
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()
        self._devices.clear()
