"""Preemption-safe checkpoint-and-resume (see docs/checkpoint.md).

``Checkpointer`` (manager), ``CheckpointConfig`` (options), the on-storage layout and
its errors. Importing this package imports torch; ``import fi_dist`` does not.
"""

from __future__ import annotations

from fi_dist.runtime.checkpoint.config import PREEMPTED_EXIT_CODE, CheckpointConfig
from fi_dist.runtime.checkpoint.layout import CheckpointCorruptError, CheckpointError
from fi_dist.runtime.checkpoint.manager import Checkpointer

__all__ = ["PREEMPTED_EXIT_CODE", "CheckpointConfig", "CheckpointCorruptError",
           "CheckpointError", "Checkpointer"]
