"""fi-dist: debug distributed PyTorch training where it runs."""

from __future__ import annotations

from fi_dist.errors import ConfigError, FiDistError
from fi_dist.spec import DebugSpec, JobSpec, ResourceSpec

__all__ = ["ConfigError", "DebugSpec", "FiDistError", "JobSpec", "ResourceSpec", "__version__"]
__version__ = "0.1.0"
