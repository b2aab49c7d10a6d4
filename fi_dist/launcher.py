"""The Launcher interface every backend implements (torchx's Scheduler, grown a little).

``dryrun(spec)`` builds the backend's request without touching a network or starting
a process; ``schedule(request)`` sends it; ``run(request, view)`` takes a job to its end
(launchers that supervise their ranks, local and Ray) or submits it (cluster
launchers). ``status``, ``logs``, ``cancel`` and ``attach`` act on a job by id. Backends
live in ``fi_dist.launchers`` and are found by name through :mod:`fi_dist.registry`;
the CLI only ever talks to this interface.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from fi_dist import rundir
from fi_dist.console import PlainView
from fi_dist.errors import ConfigError, LauncherError
from fi_dist.hang.report import Report
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
    """Per rank: node, pid, state (``running``, ``paused at f.py:3``, ``exited 1`` ...)."""
    idle: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Per node: the idle culler's last sample."""
    diagnosis: str = ""
    """The hang doctor's one line: which rank is behind, which collectives disagree."""


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


FAULT_KINDS = ("partition", "heal", "delay", "loss")
"""What ``fi-dist chaos`` can do to a node's network."""


@dataclass(frozen=True)
class Fault:
    """One network fault for ``fi-dist chaos --node K``; validated on creation."""

    kind: str
    """``partition`` (the node's link down), ``heal`` (every fault off), ``delay``, ``loss``."""
    ms: float = 0.0
    """``delay``: milliseconds added to every packet the node sends (0 removes the delay)."""
    jitter_ms: float = 0.0
    """``delay``: +- this many milliseconds, uniformly (packets keep their order)."""
    pct: float = 0.0
    """``loss``: percent of the node's outgoing packets dropped (0 removes the loss)."""

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"fault must be one of {', '.join(FAULT_KINDS)}, got {self.kind!r}")
        if not 0 <= self.ms <= 60_000 or not 0 <= self.jitter_ms <= 60_000:
            raise ConfigError(f"delay must be 0..60000 ms (jitter too), got {self.ms:g} "
                              f"+- {self.jitter_ms:g}")
        if not 0 <= self.pct <= 100:
            raise ConfigError(f"loss must be a percent in 0..100, got {self.pct:g}")

    def describe(self) -> str:
        if self.kind == "delay":
            return f"delay {self.ms:g} ms" + (f" +- {self.jitter_ms:g} ms" if self.jitter_ms
                                              else "")
        if self.kind == "loss":
            return f"loss {self.pct:g}%"
        return self.kind


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

    def run(self, dryrun: DryRun, view: PlainView) -> int:
        """Take the job to its end and return its exit code.

        Launchers that only submit (clusters with an operator) submit and return 0; the
        job then runs on its own (``status``, ``logs``, ``attach``).
        """
        job_id = self.schedule(dryrun)
        view.message(f"submitted {job_id}")
        return 0

    def status(self, job_id: str) -> JobStatus:
        raise LauncherError(f"launcher {self.name!r} cannot report status")

    def logs(self, job_id: str, rank: int | None = None) -> Iterable[str]:
        raise LauncherError(f"launcher {self.name!r} cannot fetch logs")

    def cancel(self, job_id: str) -> None:
        raise LauncherError(f"launcher {self.name!r} cannot cancel jobs")

    def chaos(self, job_id: str, node: int, fault: Fault) -> str:
        """Inject ``fault`` into node ``node``'s network of a running job.

        Returns:
            What was done, in words (the node's faults now, and the mechanism).

        Raises:
            LauncherError: this launcher (or this job's network mode) has no such faults.
        """
        raise LauncherError(f"launcher {self.name!r} cannot inject network faults "
                            "(fi-dist run --network netns can)")

    def attach(self, job_id: str, local_port: int | None = None) -> Attachment:
        """The debug hub of a ``--debug`` job: its attach configuration, reachable here.

        Raises:
            LauncherError: the job has no hub, or this launcher cannot reach one.
        """
        raise LauncherError(f"launcher {self.name!r} cannot attach to a job")

    def stacks(self, job_id: str, all_threads: bool = False) -> Report:
        """Every rank's Python stack and collectives, merged, with the diagnosis.

        Nothing is paused; works without ``--debug`` (docs/hangs.md).

        Raises:
            LauncherError: this launcher cannot reach the job's ranks.
        """
        raise LauncherError(f"launcher {self.name!r} cannot collect stacks")


class Forward(Protocol):
    """A local port forwarded to a job's hub (``kubectl port-forward``)."""

    local_port: int

    def close(self) -> None: ...


@dataclass
class Attachment:
    """How the IDE reaches a job's hub."""

    config: dict[str, Any]
    """The ``fi-dist: attach all ranks`` launch configuration (holds the job token)."""
    forward: Forward | None = None
    """A port forward that must stay open while the IDE is attached (clusters)."""
    token_files: tuple[str, ...] = ()
    """Files the job already wrote the token into (besides the launch.json attach writes)."""
    token_lifetime: str = "as long as the job"
    """How long the token is good for, in words (``fi-dist attach`` prints it)."""

    def close(self) -> None:
        if self.forward is not None:
            self.forward.close()


# --- jobs that keep a run directory (local, Ray) ----------------------------------------
def _rank_state(info: dict[str, Any]) -> str:
    state = info.get("state", "?")
    if state in ("exited", "failed"):
        return f"exited {info.get('exitcode')}"
    if state == "running" and not rundir.pid_alive(info.get("pid", -1)):
        return "gone"
    return str(state)


def run_status(path: Path) -> JobStatus:
    """A run directory's job and rank states (with each node's idle phase)."""
    run = rundir.RunDir(path)
    info = run.read_run()
    if not info:
        return JobStatus(path.name, JobState.UNKNOWN, "no such run")
    state = JobState(info.get("job_state", "unknown"))
    if state is JobState.RUNNING and not rundir.pid_alive(info.get("pid", -1)):
        state = JobState.UNKNOWN
    idle = run.node_idle()
    net = run.network().get("nodes", {}) if state is JobState.RUNNING else {}
    ranks: dict[int, dict[str, Any]] = {}
    for r, d in sorted(run.ranks().items()):
        row = {"node": d.get("node"), "pid": d.get("pid"), "state": _rank_state(d),
               **{k: v for k, v in d.items() if k.startswith(("idle", "checkpoint"))}}
        node_net = net.get(str(d.get("node")), {})
        if node_net.get("state") in ("unreachable", "lost"):  # the launcher's heartbeats
            silent = time.time() - float(node_net.get("silent_since") or time.time())
            row["state"] = (f"unreachable (node {d.get('node')}: no heartbeat for "
                            f"{silent:.0f}s; was {row['state']})")
        if node_net.get("faults", "no faults") != "no faults":
            row["network"] = node_net["faults"]
        if d.get("node") in idle:
            row.update(idle=idle[d["node"]]["phase"], idle_for=idle[d["node"]]["idle_for"])
        ranks[r] = row
    diagnosis = ""
    if state is JobState.RUNNING:  # stacks only once a rank waited in a collective
        from fi_dist.hang.collect import status_diagnosis

        diagnosis = status_diagnosis(path / "hang", run.run_id)
    return JobStatus(run.run_id, state, exitcode=info.get("exitcode"), ranks=ranks,
                     idle={n: v for n, v in idle.items()}, diagnosis=diagnosis)


def run_stacks(path: Path, all_threads: bool = False) -> Report:
    """Every rank's stack of the run at ``path`` (its ranks run on this machine)."""
    from fi_dist.hang.collect import collect
    from fi_dist.hang.ledger import read_ledgers

    run = rundir.RunDir(path)
    if not run.exists():
        raise ConfigError(f"no run {run.run_id} under {path.parent}")
    if not read_ledgers(path / "hang"):
        raise ConfigError(f"run {run.run_id} has no collective ledger yet (its ranks have not "
                          "started, or it runs with the hang doctor off)")
    return collect(path / "hang", run.run_id, all_threads=all_threads)


def run_attachment(path: Path) -> Attachment:
    """The attach configuration the hub of the run at ``path`` published."""
    run = rundir.RunDir(path)
    config = run.debug_config()
    if config is None:
        raise ConfigError(f"run {run.run_id} has no debug hub (start it with `fi-dist run "
                          "--debug`, and wait until the hub is up)")
    # The hub writes launch.json in node 0's working directory: the one above .fi-dist/.
    launch = path.parents[2] / ".vscode" / "launch.json"
    files = (str(run.debug_file), *([str(launch)] if launch.is_file() else []))
    return Attachment(config, token_files=files,
                      token_lifetime=f"until run {run.run_id} ends (every run makes a new one)")
