"""The Launcher interface every backend implements (torchx's Scheduler, trimmed).

``dryrun(spec)`` builds the backend's request without touching a network or starting
a process; ``schedule(request)`` sends it. ``submit`` is the two in a row. Backends
live in ``fi_dist.launchers`` and are found by name through :mod:`fi_dist.registry`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fi_dist.errors import LauncherError
from fi_dist.spec import JobSpec


class JobState(StrEnum):
    """PENDING -> RUNNING -> (SUCCEEDED | FAILED | CANCELLED); UNKNOWN if unreadable."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


@dataclass
class JobStatus:
    """What ``status`` reports about one job."""

    job_id: str
    state: JobState
    message: str = ""
    exitcode: int | None = None
    ranks: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class DryRun:
    """A backend request built without side effects; ``documents`` are what ``--dry-run`` prints."""

    launcher: str
    spec: JobSpec
    request: Any
    documents: list[dict[str, Any]] = field(default_factory=list)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump_all(self.documents, sort_keys=False)


class Launcher(abc.ABC):
    """One backend: local process groups, PyTorchJob, Ray, ..."""

    name: str = "launcher"

    @abc.abstractmethod
    def dryrun(self, spec: JobSpec) -> DryRun:
        """Build the request for ``spec``; no network, no processes.

        Raises:
            ConfigError: the spec cannot be expressed on this backend.
        """

    @abc.abstractmethod
    def schedule(self, dryrun: DryRun) -> str:
        """Send the request; returns the job id."""

    def submit(self, spec: JobSpec) -> str:
        return self.schedule(self.dryrun(spec))

    def status(self, job_id: str) -> JobStatus:
        raise LauncherError(f"launcher {self.name!r} cannot report status")

    def logs(self, job_id: str, rank: int | None = None) -> Iterable[str]:
        raise LauncherError(f"launcher {self.name!r} cannot fetch logs")

    def cancel(self, job_id: str) -> None:
        raise LauncherError(f"launcher {self.name!r} cannot cancel jobs")
