"""fi-dist: debug distributed PyTorch training where it runs."""

from __future__ import annotations

from fi_dist.errors import ConfigError, FiDistError
from fi_dist.spec import DebugSpec, JobSpec, ResourceSpec

__all__ = ["Checkpointer", "ConfigError", "breakpoint", "DebugSpec", "FiDistError", "JobSpec", "ResourceSpec",
           "__version__", "check_replicas", "interactive_pytorch"]
__version__ = "0.1.0"

# Public names whose modules import torch: resolved on first use, so `import fi_dist`
# stays light on the client side.
_LAZY = {"Checkpointer": "fi_dist.runtime.checkpoint",
         "breakpoint": "fi_dist.runtime.debug.api",
         "check_replicas": "fi_dist.runtime.replicas",
         "interactive_pytorch": "fi_dist.integrations.flyte"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fi_dist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
