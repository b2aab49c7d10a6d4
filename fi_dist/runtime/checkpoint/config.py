"""Checkpointer options, validated where they are made."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from fi_dist import contract
from fi_dist.errors import ConfigError

PREEMPTED_EXIT_CODE = 143
"""128 + SIGTERM: what PyTorchJob's ``restartPolicy: ExitCode`` and Flyte retry."""


def grace_from_env() -> float:
    """The job's grace period from the launcher's contract (30 s when none set it).

    Raises:
        InconsistentEnvError: the variable is not a non-negative number.
    """
    return contract.current().grace_period


@dataclass
class CheckpointConfig:
    """How a :class:`~fi_dist.runtime.checkpoint.Checkpointer` saves and stops."""

    every: int = 0
    """Save every N completed steps inside ``steps()`` (0: only on preemption / by hand)."""
    keep_last: int | None = 3
    """Complete checkpoints to keep (None: all). Incomplete ones never count."""
    grace_period: float | None = None
    """Seconds from the preemption signal to SIGKILL; None: FI_DIST_GRACE_PERIOD or 30."""
    signals: tuple[str, ...] = ("SIGTERM",)
    """Signals that mean "you are being preempted" (SIGTERM, SIGINT, SIGUSR1 ...)."""
    async_save: bool = True
    """Copy state to host memory, then write it in a background thread."""
    exit_code: int = PREEMPTED_EXIT_CODE
    """Process exit status after a preemption save (143 is retried by the operator)."""
    commit_timeout: float = 600.0
    """Seconds a rank waits for the other ranks' parts / the coordinator's commit."""
    storage_options: dict[str, Any] = field(default_factory=dict)
    """Passed to fsspec (e.g. ``client_kwargs={"endpoint_url": ...}`` for s3://)."""
    io_threads: int | None = None
    """Files a rank writes at once, and DCP's writer threads; None: a quarter of the CPUs
    this process may use, between 1 and 4 (the loop keeps the rest). A resume reads at
    least 4 files at once (the loop is not running yet)."""

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 0:
            raise ConfigError(f"every must be an integer >= 0, got {self.every!r}")
        if self.keep_last is not None and (not isinstance(self.keep_last, int)
                                           or self.keep_last < 1):
            raise ConfigError(f"keep_last must be an integer >= 1 or None, got {self.keep_last!r}")
        if self.grace_period is None:
            self.grace_period = grace_from_env()
        elif not isinstance(self.grace_period, int | float) or self.grace_period < 0:
            raise ConfigError(f"grace_period must be seconds >= 0, got {self.grace_period!r}")
        if isinstance(self.signals, str):
            self.signals = (self.signals,)
        self.signals = tuple(self.signals)
        if not 0 <= self.exit_code <= 255:
            raise ConfigError(f"exit_code must be in 0..255, got {self.exit_code!r}")
        if self.commit_timeout <= 0:
            raise ConfigError(f"commit_timeout must be > 0, got {self.commit_timeout!r}")
        if self.io_threads is None:
            self.io_threads = default_io_threads()
        elif not isinstance(self.io_threads, int) or self.io_threads < 1:
            raise ConfigError(f"io_threads must be an integer >= 1, got {self.io_threads!r}")


def default_io_threads() -> int:
    """A quarter of the CPUs this process may run on, between 1 and 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // 4))
