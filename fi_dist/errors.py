"""fi-dist's error hierarchy: one base, one class per thing that can be wrong."""

from __future__ import annotations


class FiDistError(Exception):
    """Base of every error fi-dist raises on purpose."""


class ConfigError(FiDistError, ValueError):
    """A job spec, config file or CLI flag is invalid; the message names the field."""


class InconsistentEnvError(FiDistError):
    """The process environment is inconsistent; the message names the variables."""


class LauncherError(FiDistError):
    """A launcher could not build, submit or control a job."""


class UnknownLauncherError(LauncherError, ConfigError):
    """No launcher is registered under the requested name."""


class NoRunningJobError(FiDistError):
    """No running local job was found in the run directory."""


class JobFailedError(FiDistError):
    """A job ended with at least one failed rank."""

    def __init__(self, message: str, exitcode: int = 1) -> None:
        super().__init__(message)
        self.exitcode = exitcode
