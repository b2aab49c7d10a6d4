"""The job spec: what every launcher turns into processes, pods or actors.

Pure data, imported by both the client side and the in-job runtime. Each field is
validated in ``__post_init__`` with a message that names the field and the value.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fi_dist.errors import ConfigError

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
NETWORKS = ("loopback", "netns")
"""How the local launcher networks its nodes (``JobSpec.network``)."""
MIN_NODE_TIMEOUT = 2.0
"""Shortest node timeout: a few missed heartbeats, not one late one."""


def _check_port(name: str, value: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        raise ConfigError(f"{name} must be an integer port in {low}..65535, got {value!r}")


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_non_negative(name: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")


@dataclass
class DebugSpec:
    """How the job is debugged; off unless ``enabled``."""

    enabled: bool = False
    """Start debugpy in every rank and the hub beside rank 0."""
    port: int = 5678
    """The hub's one IDE-facing port (on node 0)."""
    host: str = "127.0.0.1"
    """Address the IDE-facing port binds; loopback unless asked (a debug port is RCE)."""
    wait_for_client: bool = False
    """Hold every rank before the script's first line until a client attaches."""
    post_mortem_wait: float = 0.0
    """Seconds a rank that raised waits for a client before the job fails (0: no wait)."""
    trace: str = "lazy"
    """When ranks start pydevd's tracing: ``lazy`` (once a breakpoint, exception filter or
    pause needs it; no cost before) or ``eager`` (from the first line, as debugpy does)."""
    code_server: bool = False
    """Start code-server (VSCode in the browser) on node 0 beside the hub, with the fi-dist
    extension installed offline; its URL and password file are printed (docs/debug.md)."""
    code_server_port: int = 8080
    """code-server's port on node 0's 127.0.0.1 (0: a free one)."""
    extensions: list[str] = field(default_factory=list)
    """More ``.vsix`` files to install into that code-server (offline, from these paths)."""

    def __post_init__(self) -> None:
        _check_port("debug.port", self.port, allow_zero=True)
        _check_port("debug.code_server_port", self.code_server_port, allow_zero=True)
        if isinstance(self.extensions, str) or not all(
                isinstance(e, str) for e in self.extensions):
            raise ConfigError(f"debug.extensions must be a list of .vsix paths, got "
                              f"{self.extensions!r}")
        self.extensions = list(self.extensions)
        for ext in self.extensions:
            if not ext.endswith(".vsix") or not Path(ext).is_file():
                raise ConfigError(f"debug.extensions: {ext!r} is not a .vsix file here "
                                  "(give the path of a VSCode extension package)")
        _check_non_negative("debug.post_mortem_wait", self.post_mortem_wait)
        if self.trace not in ("lazy", "eager"):
            raise ConfigError(f"debug.trace must be 'lazy' or 'eager', got {self.trace!r}")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"debug.host must be a non-empty address, got {self.host!r}")


@dataclass
class ResourceSpec:
    """Per-node (per-pod) resources."""

    cpu: str | None = None
    """CPU request/limit, Kubernetes quantity (e.g. "8")."""
    memory: str | None = None
    """Memory request/limit, Kubernetes quantity (e.g. "64Gi")."""
    gpus: int = 0
    """GPUs per node (``nvidia.com/gpu``); nproc_per_node defaults to it on clusters."""

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise ConfigError(f"resources.gpus must be an integer >= 0, got {self.gpus!r}")


_IDLE_SAMPLERS = ("auto", "nvml", "cpu")


@dataclass(frozen=True)
class IdleSpec:
    """Idle-worker culling (fi_dist.runtime.idle); off unless ``enabled``."""

    enabled: bool = False
    """Watch every node and end the ones that stay idle for ``timeout`` seconds."""
    timeout: float = 1800.0
    """Seconds every device must stay under ``threshold`` with no debugger action."""
    threshold: float = 5.0
    """Utilisation percent (GPU, or CPU of a rank process) under which it counts as idle."""
    interval: float = 10.0
    """Seconds between two samples; detection takes at most timeout + 2 intervals. One
    over a third of ``timeout`` is clamped to it (:attr:`sample_interval`)."""
    warn_lead: float = 300.0
    """Seconds before ending that the warning goes out (at most half the timeout)."""
    dry_run: bool = False
    """Only report (notify, status); never signal a rank."""
    sampler: str = "auto"
    """Utilisation source: nvml (GPUs), cpu (process CPU time) or auto (nvml if usable)."""
    hang_factor: float = 10.0
    """A busy node's rank is hung when its step heartbeat is this many median steps old."""
    webhook: str | None = None
    """URL that receives each notification as an HTTP POST with a JSON body."""
    email: tuple[str, ...] = ()
    """Addresses that receive each notification by mail."""
    smtp: str = "localhost:25"
    """SMTP server HOST:PORT for ``email``."""
    email_from: str = "fi-dist@localhost"
    """Sender address of the mail."""

    def __post_init__(self) -> None:
        for name in ("timeout", "interval"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"idle.{name} must be a number of seconds > 0, got {value!r}")
        _check_non_negative("idle.warn_lead", self.warn_lead)
        if not isinstance(self.threshold, int | float) or not 0 < self.threshold <= 100:
            raise ConfigError(f"idle.threshold must be a percent in (0, 100], got {self.threshold!r}")
        if self.sampler not in _IDLE_SAMPLERS:
            raise ConfigError(f"idle.sampler must be one of {', '.join(_IDLE_SAMPLERS)}, "
                              f"got {self.sampler!r}")
        if not isinstance(self.hang_factor, int | float) or self.hang_factor <= 1:
            raise ConfigError(f"idle.hang_factor must be a number > 1, got {self.hang_factor!r}")
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"idle.webhook must be an http(s) URL, got {self.webhook!r}")
        if isinstance(self.email, str):
            object.__setattr__(self, "email", tuple(a.strip() for a in self.email.split(",")
                                                    if a.strip()))
        object.__setattr__(self, "email", tuple(self.email))
        if not all(isinstance(a, str) and "@" in a for a in self.email):
            raise ConfigError(f"idle.email must be mail addresses, got {self.email!r}")
        host, sep, port = self.smtp.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"idle.smtp must be HOST:PORT, got {self.smtp!r}")

    @property
    def sample_interval(self) -> float:
        """The period the culler samples at: ``interval``, at most a third of ``timeout``,
        so an idle node is ended within the window + 2 samples, not 3 windows later."""
        return min(float(self.interval), self.timeout / 3)

    def interval_note(self) -> str | None:
        """Why :attr:`sample_interval` differs from ``interval`` (None when it does not)."""
        if self.sample_interval >= self.interval:
            return None
        return (f"idle: interval {self.interval:g}s is more than a third of the "
                f"{self.timeout:g}s window; sampling every {self.sample_interval:.3g}s "
                "instead (set --idle-interval to at most timeout/3 to choose)")


@dataclass
class JobSpec:
    """One distributed training job, independent of where it runs."""

    script: str
    """Training script, run unmodified as under torchrun (a module with ``module``, a
    program with ``no_python``)."""
    script_args: list[str] = field(default_factory=list)
    """Arguments passed to the script."""
    module: bool = False
    """Run ``script`` as a module, like ``python -m`` (torchrun's ``-m``)."""
    no_python: bool = False
    """Run ``script`` as a program (on PATH or a path), not through ``python`` (torchrun's
    ``--no-python``); a Python console script still runs in the rank's interpreter."""
    pod_entrypoint: bool = False
    """Local launcher: each node runs the target itself as its pod's entrypoint, with the
    operator's pod env and no node agent or torchrun (a Flyte ``PyTorch`` task's pod)."""
    name: str = "fi-dist-job"
    """Job name; a DNS-1035 label (it names Kubernetes objects)."""
    nnodes: int = 1
    """Number of nodes (pods, Ray nodes, local process groups)."""
    nproc_per_node: int = 1
    """Ranks per node."""
    master_port: int = 29500
    """Rendezvous port on node 0 (0: pick a free one, local launcher only)."""
    launcher: str = "local"
    """Backend name in the launcher registry."""
    image: str | None = None
    """Container image (cluster launchers)."""
    namespace: str = "default"
    """Kubernetes namespace (cluster launchers)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every rank."""
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    """Per-node resources."""
    debug: DebugSpec = field(default_factory=DebugSpec)
    """Debugging options."""
    max_restarts: int = 0
    """Whole-job restarts after a failure or preemption (like restartPolicy: ExitCode)."""
    grace_period: float = 30.0
    """Seconds from SIGTERM to SIGKILL (terminationGracePeriodSeconds)."""
    checkpoint_uri: str | None = None
    """Checkpoint directory or URI handed to the job (FI_DIST_CKPT_DIR)."""
    idle: IdleSpec = field(default_factory=IdleSpec)
    """Idle-worker culling options."""
    hang_timeout: float = 0.0
    """Seconds without progress (no collective completed, no step, on any rank) after which
    fi-dist captures every rank's stack and ends the job (0: never; docs/hangs.md)."""
    hang_doctor: bool = True
    """Collective ledger and stack dumper in every rank (``fi-dist stacks``); off: neither."""
    network_policy: bool = False
    """PyTorchJob: also create a NetworkPolicy letting only the job's own pods reach its
    pods (the rendezvous store and the hub's rank port among them; docs/debug.md)."""
    network: str = "loopback"
    """Local launcher: ``loopback`` (every node a set of 127.0.0.x addresses of one
    loopback) or ``netns`` (every node in its own network namespace with its own eth0,
    pod IP and DNS names; needs root; docs/launchers.md)."""
    node_timeout: float = 60.0
    """Local launcher: seconds a node's agent may stay unreachable before the node is
    treated as lost (failed, retryable); 0 disables. Clusters have their own node lifecycle."""

    def __post_init__(self) -> None:
        if isinstance(self.resources, dict):
            self.resources = ResourceSpec(**self.resources)
        if isinstance(self.debug, dict):
            self.debug = DebugSpec(**self.debug)
        if isinstance(self.idle, dict):
            try:
                self.idle = IdleSpec(**self.idle)
            except TypeError as exc:  # an unknown key: name it, like config.py does
                raise ConfigError(f"idle: {exc}") from None
        if not isinstance(self.script, str) or not self.script:
            raise ConfigError(f"script must be a non-empty path, got {self.script!r}")
        for flag in ("module", "no_python", "pod_entrypoint"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.module and self.no_python:
            raise ConfigError("module and no_python cannot be used together (a module runs "
                              "with python -m; --no-python runs a program without python)")
        if self.module and not _MODULE.match(self.script):
            raise ConfigError(f"module: {self.script!r} is not a dotted module name "
                              "(like pkg.train); drop -m to run a script file")
        if not isinstance(self.name, str) or len(self.name) > 63 or not _DNS_1035.match(self.name):
            raise ConfigError(
                f"name must be a DNS-1035 label (lower-case letters, digits, '-', "
                f"starting with a letter, at most 63 characters), got {self.name!r}"
            )
        _check_positive("nnodes", self.nnodes)
        _check_positive("nproc_per_node", self.nproc_per_node)
        _check_port("master_port", self.master_port, allow_zero=True)
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be an integer >= 0, got {self.max_restarts!r}")
        _check_non_negative("grace_period", self.grace_period)
        _check_non_negative("hang_timeout", self.hang_timeout)
        if self.hang_timeout and not self.hang_doctor:
            raise ConfigError("hang_timeout needs the hang doctor (hang_doctor: true)")
        if self.hang_timeout and self.launcher in ("pytorchjob", "trainjob"):
            raise ConfigError(f"hang_timeout: the {self.launcher} launcher has no fi-dist "
                              "supervisor to end a hung job (local, ray and rayjob have)")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in self.env.items()):
            raise ConfigError(f"env must map strings to strings, got {self.env!r}")
        self.script_args = [str(a) for a in self.script_args]
        if not isinstance(self.network_policy, bool):
            raise ConfigError(f"network_policy must be true or false, got {self.network_policy!r}")
        if self.pod_entrypoint and self.launcher != "local":
            raise ConfigError(f"pod_entrypoint: only the local launcher runs the target as "
                              f"each pod's entrypoint, not {self.launcher!r}")
        if self.pod_entrypoint and self.debug.enabled:
            raise ConfigError("pod_entrypoint: no node agent starts a debug hub when the pods "
                              "run the target themselves; use @interactive_pytorch in it "
                              "(docs/flyte.md) instead of --debug")
        if self.network not in NETWORKS:
            raise ConfigError(f"network must be one of {', '.join(NETWORKS)}, "
                              f"got {self.network!r}")
        if self.network != "loopback" and self.launcher != "local":
            raise ConfigError(f"network: {self.network!r} is a mode of the local launcher, "
                              f"not of {self.launcher!r}")
        _check_non_negative("node_timeout", self.node_timeout)
        if 0 < self.node_timeout < MIN_NODE_TIMEOUT:
            raise ConfigError(f"node_timeout must be 0 (off) or >= {MIN_NODE_TIMEOUT:g} "
                              f"seconds (nodes beat every 0.5 s), got {self.node_timeout!r}")
        if self.network_policy and self.launcher != "pytorchjob":
            raise ConfigError(f"network_policy: only the pytorchjob launcher creates a "
                              f"NetworkPolicy, not {self.launcher!r}")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
