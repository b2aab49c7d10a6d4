"""What a checkpoint holds and how it leaves the training loop: state dicts, RNG, host copies."""

from __future__ import annotations

import copy
import random
import sys
from typing import Any

import torch


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel / DataParallel (saved without ``module.``)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel  # noqa: PLC0415

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """True when parameters are DTensors (FSDP2, tensor parallel) or the model is FSDP1."""
    # A sharded model means its user imported these already; importing them here for
    # everyone else would cost seconds of start-up.
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is not None and isinstance(model, fsdp.FullyShardedDataParallel):
        return True
    dtensor = sys.modules.get("torch.distributed.tensor")
    if dtensor is None:
        return False
    return any(isinstance(p, dtensor.DTensor) for p in model.parameters())


def rng_state() -> dict[str, Any]:
    """This process's RNG states: python, numpy, torch CPU and every CUDA device."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np  # noqa: PLC0415

        state["numpy"] = np.random.get_state()
    except ImportError:
        pass
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (missing parts are left alone)."""
    if "python" in state:
        random.setstate(state["python"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        import numpy as np  # noqa: PLC0415

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class HostBuffers:
    """Host-memory copies reused from one save to the next (keyed by position in the state).

    A fresh copy of a large state faults in every page of new memory, which costs more
    than the copy itself; reusing last save's buffers makes the loop's stall a memcpy.
    Safe because at most one save is in flight and a new snapshot waits for it.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[Any, ...], torch.Tensor] = {}

    def copy(self, key: tuple[Any, ...], t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        buf = self._bufs.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype or t.is_sparse \
                or not t.is_contiguous():
            buf = t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone()
            self._bufs[key] = buf
        else:
            buf.copy_(t)
        return buf


def to_host(obj: Any, buffers: HostBuffers | None = None, key: tuple[Any, ...] = ()) -> Any:
    """A deep copy of ``obj`` whose tensors live in host memory, detached from training.

    This copy is the only part of an async save that stalls the loop: after it, the
    optimizer may change the live tensors while the copy is written in the background.
    """
    if isinstance(obj, torch.Tensor):
        if buffers is not None:
            return buffers.copy(key, obj)
        t = obj.detach()
        return t.to("cpu", copy=True) if t.device.type != "cpu" else t.clone()
    if isinstance(obj, dict):
        items = [(k, to_host(v, buffers, (*key, k))) for k, v in obj.items()]
        return dict(items) if type(obj) is dict else type(obj)(items)
    if isinstance(obj, list | tuple):
        out = [to_host(v, buffers, (*key, i)) for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    return copy.deepcopy(obj)


def state_of(obj: Any) -> Any:
    """``obj.state_dict()`` for torch-style stateful objects."""
    fn = getattr(obj, "state_dict", None)
    if not callable(fn):
        raise TypeError(f"{type(obj).__name__} has no state_dict(); pass an object with "
                        "state_dict()/load_state_dict()")
    return fn()


def load_into(obj: Any, state: Any) -> None:
    fn = getattr(obj, "load_state_dict", None)
    if not callable(fn):
        raise TypeError(f"{type(obj).__name__} has no load_state_dict()")
    fn(state)
