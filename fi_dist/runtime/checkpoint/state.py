"""What a checkpoint holds: the training objects, their state dicts, the RNG states."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TrainState:
    """The live objects one rank saves from and restores into.

    The loader and the writers take this (not the Checkpointer): what to restore, and
    nothing about how or when.
    """

    model: torch.nn.Module
    """The model; DDP / DataParallel wrappers are looked through (see :func:`unwrap`)."""
    optimizer: Any = None
    scheduler: Any = None
    data_state: Any = None
    """An object with ``state_dict()/load_state_dict()`` for the data position (per rank)."""

    @property
    def module(self) -> torch.nn.Module:
        return unwrap(self.model)

    @property
    def sharded(self) -> bool:
        """Parameters are sharded (FSDP / DTensor): saved through DCP."""
        return is_sharded(self.module)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DistributedDataParallel / DataParallel (saved without ``module.``)."""
    from torch.nn.parallel import DataParallel, DistributedDataParallel

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
        import numpy as np

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
        import numpy as np

        np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def portable_rng(state: dict[str, Any]) -> dict[str, Any]:
    """RNG state in types a checkpoint file stores as tensors (numpy's key array -> tensor)."""
    out = dict(state)
    if "numpy" in out:
        kind, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached)
    return out


def native_rng(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`portable_rng`."""
    out = dict(state)
    if "numpy" in out:
        kind, keys, pos, has_gauss, cached = out["numpy"]
        out["numpy"] = (kind, keys.numpy(), pos, has_gauss, cached)
    return out


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
