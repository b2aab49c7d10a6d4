"""The contract between launchers and the in-job runtime: the job's settings as env.

A launcher builds a :class:`JobContract` once from the :class:`~fi_dist.spec.JobSpec`
(:meth:`JobContract.from_spec`), turns it into environment variables
(:meth:`JobContract.to_env`) and adds only its placement variables (the operator's pod
env, torchrun's or Ray's rank env, the node address). Every process of the job reads
it back once (:func:`current`, i.e. :meth:`JobContract.from_env`). The rules that must
agree on both sides live here once: the rank port (IDE port + 1 unless given), how
numbers are written, and every default (taken from the spec's dataclasses).

Standard library only (plus the shared core): imported by launchers, the Kubernetes
manifests and every rank.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fi_dist import env_vars as ev
from fi_dist.errors import ConfigError, InconsistentEnvError
from fi_dist.spec import NETWORKS, DebugSpec, IdleSpec, JobSpec

DEFAULT_PG_TIMEOUT = 7 * 24 * 3600.0
"""Seconds of process-group timeout in debug mode: any debugging session, not forever."""
HUB_READY = "fi-dist-hub-ready"
"""The line the hub prints once both its ports listen: ``fi-dist-hub-ready IDE RANK``."""

_DEBUG = DebugSpec()
_JOB_GRACE = JobSpec(script="-").grace_period
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class LauncherKind(StrEnum):
    """What started this process."""

    LOCAL = "local"
    """fi-dist's local launcher (node agents + torchrun semantics)."""
    PYTORCHJOB = "pytorchjob"
    """A Kubeflow PyTorchJob pod (operator env), usually with torchrun inside."""
    TORCHRUN = "torchrun"
    """Plain torchrun (torch.distributed.elastic) outside a known launcher."""
    RAY = "ray"
    """A rank actor started by fi-dist's Ray launcher."""
    SINGLE = "single"
    """One plain process: world size 1."""


def detect_launcher(env: Mapping[str, str] | None = None) -> LauncherKind:
    """Which launcher started the process whose env is ``env``.

    Raises:
        InconsistentEnvError: ``FI_DIST_LAUNCHER`` names no known launcher.
    """
    env = os.environ if env is None else env
    declared = env.get(ev.FI_DIST_LAUNCHER)
    if declared:
        try:
            return LauncherKind(declared)
        except ValueError:
            known = ", ".join(k.value for k in LauncherKind)
            raise InconsistentEnvError(
                f"{ev.FI_DIST_LAUNCHER}={declared!r} is not one of {known}") from None
    if ev.PET_NNODES in env or ev.PET_NODE_RANK in env:
        return LauncherKind.PYTORCHJOB
    if ev.TORCHELASTIC_RUN_ID in env:
        return LauncherKind.TORCHRUN
    return LauncherKind.SINGLE


# --- the runtime's entry points ------------------------------------------------------
MODULE_FLAG = "--module"
"""Leading argument of a rank's target: run SCRIPT as a module (torchrun's ``-m``)."""
NO_PYTHON_FLAG = "--no-python"
"""Leading argument of a rank's target: run SCRIPT as a program (torchrun's ``--no-python``)."""
IDLE_READY = "fi-dist-idle-ready"
"""The line a node's idle culler process prints once it watches (``fi-dist-idle-ready K``)."""
IDLE_EXIT_CODE = 75
"""Exit code of a node the idle culler ended: in 1..127, so ``restartPolicy: ExitCode``
and ``--max-restarts`` never restart a job nobody uses (docs/idle.md)."""


def target_args(script: str, args: list[str], module: bool = False,
                no_python: bool = False) -> list[str]:
    """A rank's target as the node agent and :mod:`fi_dist.runtime.rank_main` take it."""
    flag = [MODULE_FLAG] if module else [NO_PYTHON_FLAG] if no_python else []
    return [*flag, script, *args]


def node_agent_command(script: str, args: list[str], python: str = sys.executable, *,
                       module: bool = False, no_python: bool = False) -> list[str]:
    """What one node ("pod") runs: torchrun's semantics around ``nproc_per_node`` ranks."""
    return [python, "-m", "fi_dist.runtime.node_agent",
            *target_args(script, args, module, no_python)]


def rank_command(script: str, args: list[str], python: str = sys.executable, *,
                 module: bool = False, no_python: bool = False) -> list[str]:
    """What one rank runs when no node agent starts it (Ray actors, Trainer v2's torchrun)."""
    return [python, "-m", "fi_dist.runtime.rank_main",
            *target_args(script, args, module, no_python)]


def program_command(script: str, args: list[str], python: str = sys.executable, *,
                    module: bool = False, no_python: bool = False) -> list[str]:
    """The target on its own, as a pod's entrypoint runs it (no node agent, no rank_main):
    ``python SCRIPT``, ``python -m MODULE`` or ``PROGRAM``."""
    if no_python:
        return [script, *args]
    return [python, *(["-m"] if module else []), script, *args]


def hub_command(rank_host: str, python: str = sys.executable) -> list[str]:
    """The debug hub; its settings come from the environment (:meth:`DebugSettings.to_env`).

    It prints :data:`HUB_READY` with its two ports once both listen.
    """
    return [python, "-m", "fi_dist.runtime.debug.hub", "--rank-host", rank_host]


def idle_command(node: int, python: str = sys.executable) -> list[str]:
    """Node ``node``'s idle culler as a process of its own (a Ray node has no node agent);
    its settings and run directory come from the environment (:meth:`JobContract.to_env`).

    It prints :data:`IDLE_READY` once it watches, and exits :data:`IDLE_EXIT_CODE` after
    it ended the node.
    """
    return [python, "-m", "fi_dist.runtime.idle", "--node", str(node)]


# --- node liveness (local launcher) ------------------------------------------------------
HEARTBEAT_EVERY = 0.5
"""Seconds between two heartbeats of a node agent."""
_HEARTBEAT_TAG = "fi-dist-hb"


def heartbeat_message(run_id: str, node: int, attempt: int, seq: int) -> bytes:
    """One heartbeat datagram: node ``node`` of attempt ``attempt`` of run ``run_id`` lives."""
    return f"{_HEARTBEAT_TAG} {run_id} {node} {attempt} {seq}".encode()


def parse_heartbeat(data: bytes) -> tuple[str, int, int] | None:
    """(run id, node, attempt) of a heartbeat datagram; None for anything else."""
    try:
        tag, run_id, node, attempt, _seq = data.decode("ascii").split()
        if tag == _HEARTBEAT_TAG:
            return run_id, int(node), int(attempt)
    except (UnicodeDecodeError, ValueError):
        pass
    return None
def stacks_command(python: str = sys.executable, all_threads: bool = False) -> list[str]:
    """A node's ranks' stacks and ledgers as JSON (run in a pod: ``kubectl exec``)."""
    return [python, "-m", "fi_dist.hang.collect", "--json",
            *(["--all-threads"] if all_threads else [])]


# --- how values are written and read -------------------------------------------------
def seconds(value: float) -> str:
    """A number of seconds as env text: ``30``, ``0.5`` (exact: read back equal)."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def flag(value: bool) -> str:
    return "1" if value else "0"


def new_token() -> str:
    """A fresh job token (128 bits): every hub connection must prove it holds it."""
    return secrets.token_hex(16)


def rank_port_for(ide_port: int) -> int:
    """The hub's rank port when none is given: the IDE port + 1 (0 when the IDE port is)."""
    return ide_port + 1 if ide_port else 0


class _Reader:
    """Reads one mapping's variables; every error names the variable and its value."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        return value if value else None

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def number(self, name: str, default: float, minimum: float = 0.0) -> float:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise InconsistentEnvError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise InconsistentEnvError(f"{name}={raw!r} must be >= {minimum:g}")
        return value

    def integer(self, name: str, default: int) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise InconsistentEnvError(f"{name}={raw!r} is not an integer") from None

    def port(self, name: str, default: int) -> int:
        value = self.integer(name, default)
        if not 0 <= value <= 65535:
            raise InconsistentEnvError(f"{name}={value} is not a port in 0..65535")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        raw = self.raw(name)
        if raw is None:
            return default
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise InconsistentEnvError(f"{name}={raw!r} is not a boolean (1 or 0)")


# --- debug settings --------------------------------------------------------------------
@dataclass(frozen=True)
class DebugSettings:
    """How every rank and the hub of a ``--debug`` job are set up."""

    token: str
    """The job token: the hub refuses every connection that cannot prove it holds it."""
    ide_host: str = _DEBUG.host
    """Address the hub's IDE port binds (loopback unless asked: a debug port is RCE)."""
    ide_port: int = _DEBUG.port
    """The hub's one IDE-facing port on node 0 (0: a free one, published in launch.json)."""
    rank_port: int | None = None
    """The hub's rank-facing port on node 0; None: :func:`rank_port_for` the IDE port."""
    wait_for_client: bool = _DEBUG.wait_for_client
    """Hold every rank before the script's first line until a client attaches."""
    post_mortem_wait: float = _DEBUG.post_mortem_wait
    """Seconds a rank that raised waits for a client before the job fails."""
    trace: str = _DEBUG.trace
    """``lazy`` or ``eager``: when ranks start pydevd's tracing (docs/debug.md)."""
    pg_timeout: float = DEFAULT_PG_TIMEOUT
    """Seconds of process-group/store timeout forced while debugging (paused ranks live)."""
    code_server: bool = _DEBUG.code_server
    """Node 0 starts code-server beside the hub, with the fi-dist extension."""
    code_server_port: int = _DEBUG.code_server_port
    """That code-server's port on 127.0.0.1 (0: a free one)."""
    extensions: tuple[str, ...] = ()
    """More .vsix files (absolute paths) that code-server installs offline."""

    def __post_init__(self) -> None:
        if self.trace not in ("lazy", "eager"):
            raise ConfigError(f"debug trace must be 'lazy' or 'eager', got {self.trace!r}")
        if not self.token:
            raise ConfigError("debug settings need a job token")

    @property
    def hub_rank_port(self) -> int:
        """Where ranks dial the hub (on node 0's address)."""
        return rank_port_for(self.ide_port) if self.rank_port is None else self.rank_port

    @classmethod
    def from_spec(cls, spec: DebugSpec, token: str | None = None,
                  rank_port: int | None = None) -> DebugSettings:
        return cls(token=token or new_token(), ide_host=spec.host, ide_port=spec.port,
                   rank_port=rank_port, wait_for_client=spec.wait_for_client,
                   post_mortem_wait=float(spec.post_mortem_wait), trace=spec.trace,
                   code_server=spec.code_server, code_server_port=spec.code_server_port,
                   extensions=tuple(os.path.abspath(e) for e in spec.extensions))

    def to_env(self) -> dict[str, str]:
        return {
            ev.FI_DIST_DEBUG: "1",
            ev.FI_DIST_DEBUG_TOKEN: self.token,
            ev.FI_DIST_DEBUG_HOST: self.ide_host,
            ev.FI_DIST_DEBUG_PORT: str(self.ide_port),
            ev.FI_DIST_DEBUG_RANK_PORT: str(self.hub_rank_port),
            ev.FI_DIST_WAIT_FOR_CLIENT: flag(self.wait_for_client),
            ev.FI_DIST_POST_MORTEM_WAIT: seconds(self.post_mortem_wait),
            ev.FI_DIST_DEBUG_TRACE: self.trace,
            ev.FI_DIST_DEBUG_PG_TIMEOUT: seconds(self.pg_timeout),
        } | self._code_server_env()

    def _code_server_env(self) -> dict[str, str]:
        if not self.code_server:
            return {}
        env = {ev.FI_DIST_CODE_SERVER_START: "1",
               ev.FI_DIST_CODE_SERVER_PORT: str(self.code_server_port)}
        if self.extensions:
            env[ev.FI_DIST_VSIX] = os.pathsep.join(self.extensions)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DebugSettings | None:
        """None unless ``FI_DIST_DEBUG=1``.

        Raises:
            InconsistentEnvError: the token is missing, or a value does not parse.
        """
        r = _Reader(env)
        if not r.boolean(ev.FI_DIST_DEBUG):
            return None
        token = r.raw(ev.FI_DIST_DEBUG_TOKEN)
        if not token:
            raise InconsistentEnvError(f"{ev.FI_DIST_DEBUG}=1 but {ev.FI_DIST_DEBUG_TOKEN} is "
                                       "unset: the hub refuses ranks without the job token")
        trace = r.text(ev.FI_DIST_DEBUG_TRACE, _DEBUG.trace).strip().lower()
        if trace not in ("lazy", "eager"):
            raise InconsistentEnvError(f"{ev.FI_DIST_DEBUG_TRACE}={trace!r}: expected lazy "
                                       "or eager")
        ide_port = r.port(ev.FI_DIST_DEBUG_PORT, _DEBUG.port)
        rank_port = r.port(ev.FI_DIST_DEBUG_RANK_PORT, rank_port_for(ide_port))
        return cls(
            token=token,
            ide_host=r.text(ev.FI_DIST_DEBUG_HOST, _DEBUG.host),
            ide_port=ide_port,
            rank_port=None if rank_port == rank_port_for(ide_port) else rank_port,
            wait_for_client=r.boolean(ev.FI_DIST_WAIT_FOR_CLIENT, _DEBUG.wait_for_client),
            post_mortem_wait=r.number(ev.FI_DIST_POST_MORTEM_WAIT, _DEBUG.post_mortem_wait),
            trace=trace,
            pg_timeout=r.number(ev.FI_DIST_DEBUG_PG_TIMEOUT, DEFAULT_PG_TIMEOUT, minimum=1.0),
            code_server=r.boolean(ev.FI_DIST_CODE_SERVER_START),
            code_server_port=r.port(ev.FI_DIST_CODE_SERVER_PORT, _DEBUG.code_server_port),
            extensions=tuple(p for p in (r.raw(ev.FI_DIST_VSIX) or "").split(os.pathsep) if p),
        )


# --- idle culling ----------------------------------------------------------------------
_IDLE_SECONDS = {
    "timeout": ev.FI_DIST_IDLE_TIMEOUT,
    "threshold": ev.FI_DIST_IDLE_THRESHOLD,
    "interval": ev.FI_DIST_IDLE_INTERVAL,
    "warn_lead": ev.FI_DIST_IDLE_WARN_LEAD,
    "hang_factor": ev.FI_DIST_IDLE_HANG_FACTOR,
}
_IDLE_TEXT = {
    "sampler": ev.FI_DIST_IDLE_SAMPLER,
    "webhook": ev.FI_DIST_IDLE_WEBHOOK,
    "smtp": ev.FI_DIST_IDLE_SMTP,
    "email_from": ev.FI_DIST_IDLE_EMAIL_FROM,
}


def idle_to_env(spec: IdleSpec) -> dict[str, str]:
    """FI_DIST_IDLE_* for every node; empty when culling is off."""
    if not spec.enabled:
        return {}
    env = {name: seconds(getattr(spec, f)) for f, name in _IDLE_SECONDS.items()}
    env.update({name: getattr(spec, f) for f, name in _IDLE_TEXT.items()
                if getattr(spec, f) is not None})
    if spec.email:
        env[ev.FI_DIST_IDLE_EMAIL] = ",".join(spec.email)
    env[ev.FI_DIST_IDLE_DRY_RUN] = flag(spec.dry_run)
    return env


def idle_from_env(env: Mapping[str, str]) -> IdleSpec | None:
    """The culler's settings; None when ``FI_DIST_IDLE_TIMEOUT`` is unset.

    Raises:
        InconsistentEnvError: a value that does not parse, or an invalid combination.
    """
    r = _Reader(env)
    if r.raw(ev.FI_DIST_IDLE_TIMEOUT) is None:
        return None
    defaults = IdleSpec()
    kwargs: dict[str, Any] = {"enabled": True}
    for f, name in _IDLE_SECONDS.items():
        kwargs[f] = r.number(name, getattr(defaults, f))
    for f, name in _IDLE_TEXT.items():
        if (value := r.raw(name)) is not None:
            kwargs[f] = value
    if (emails := r.raw(ev.FI_DIST_IDLE_EMAIL)) is not None:
        kwargs["email"] = emails
    kwargs["dry_run"] = r.boolean(ev.FI_DIST_IDLE_DRY_RUN)
    try:
        return IdleSpec(**kwargs)
    except ConfigError as exc:
        raise InconsistentEnvError(f"FI_DIST_IDLE_*: {exc}") from None


# --- the job -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobContract:
    """Everything a launcher tells every process of a job, beyond placement."""

    launcher: LauncherKind
    """Which launcher started the job."""
    run_id: str = ""
    """Unique id of the run; every process carries it (orphan sweep, logs)."""
    run_dir: str | None = None
    """Directory where ranks and node agents leave state (local and local-Ray runs)."""
    attempt: int = 0
    """Restart attempt of the whole job, 0 for the first."""
    max_restarts: int = 0
    """Whole-job restarts the launcher allows (``--max-restarts``)."""
    grace_period: float = _JOB_GRACE
    """Seconds from SIGTERM to SIGKILL (terminationGracePeriodSeconds)."""
    checkpoint_dir: str | None = None
    """Checkpoint directory or URI for the job's Checkpointer."""
    debug: DebugSettings | None = None
    """Debug hub settings; None when the job is not debugged."""
    idle: IdleSpec | None = None
    """Idle culler settings; None when culling is off."""
    env: tuple[tuple[str, str], ...] = ()
    """The user's extra environment for every rank, as sorted (name, value) pairs."""
    network: str = "loopback"
    """Local launcher: ``loopback`` (gloo pinned to ``lo``) or ``netns`` (each node in its
    own network namespace: gloo picks the node's interface as in a pod)."""
    heartbeat: str | None = None
    """``HOST:PORT`` (UDP) where each node agent reports that it is alive (local launcher)."""
    lifeline_fd: int | None = None
    """A pipe's read end each node agent inherits; end of file means the launcher is gone."""
    owner: str = ""
    """``PID:STARTTIME`` of the launcher process; leftovers of a dead owner are swept."""
    hang_doctor: bool = True
    """Collective ledger and stack dumper in every rank (fi_dist.runtime.hang)."""

    def __post_init__(self) -> None:
        pairs = tuple(sorted(dict(self.env).items()))
        bad = [k for k, _ in pairs if not _ENV_NAME.match(k)]
        if bad:
            raise ConfigError(f"env: {bad[0]!r} is not a valid environment variable name")
        object.__setattr__(self, "env", pairs)

    @classmethod
    def from_spec(cls, spec: JobSpec, launcher: LauncherKind | str, run_id: str = "",
                  run_dir: str | None = None, token: str | None = None,
                  rank_port: int | None = None, checkpoint_dir: str | None = None
                  ) -> JobContract:
        """The job's settings, built once per run.

        Args:
            launcher: who starts the ranks.
            run_id, run_dir: the run's id and state directory (empty / None on clusters
                without a shared directory).
            token: the job token (a new one when None and debugging).
            rank_port: the hub's rank port when the launcher picks it (else IDE port + 1).
            checkpoint_dir: where the job checkpoints, when it differs from
                ``spec.checkpoint_uri`` (a volume mounted in the pod).
        """
        debug = (DebugSettings.from_spec(spec.debug, token, rank_port)
                 if spec.debug.enabled else None)
        return cls(launcher=LauncherKind(launcher), run_id=run_id, run_dir=run_dir,
                   max_restarts=spec.max_restarts, grace_period=float(spec.grace_period),
                   checkpoint_dir=checkpoint_dir or spec.checkpoint_uri, debug=debug,
                   idle=spec.idle if spec.idle.enabled else None,
                   env=tuple(spec.env.items()), network=spec.network,
                   hang_doctor=spec.hang_doctor)

    def to_env(self) -> dict[str, str]:
        """The variables for every process of the job (the user's env included)."""
        out = dict(self.env)
        out.update({
            ev.FI_DIST_LAUNCHER: self.launcher.value,
            ev.FI_DIST_GRACE_PERIOD: seconds(self.grace_period),
        })
        if self.attempt:
            out[ev.FI_DIST_ATTEMPT] = str(self.attempt)
        if self.max_restarts:
            out[ev.FI_DIST_MAX_RESTARTS] = str(self.max_restarts)
        if self.env:
            out[ev.FI_DIST_USER_ENV] = ",".join(name for name, _ in self.env)
        if self.run_id:
            out[ev.FI_DIST_RUN_ID] = self.run_id
        if self.run_dir:
            out[ev.FI_DIST_RUN_DIR] = self.run_dir
        if self.checkpoint_dir:
            out[ev.FI_DIST_CKPT_DIR] = self.checkpoint_dir
        if self.debug is not None:
            out.update(self.debug.to_env())
        if self.idle is not None:
            out.update(idle_to_env(self.idle))
        if self.network != "loopback":
            out[ev.FI_DIST_NETWORK] = self.network
        if self.heartbeat:
            out[ev.FI_DIST_HEARTBEAT] = self.heartbeat
        if self.lifeline_fd is not None:
            out[ev.FI_DIST_LIFELINE_FD] = str(self.lifeline_fd)
        if self.owner:
            out[ev.FI_DIST_OWNER] = self.owner
        if not self.hang_doctor:  # on unless said (pod env and snapshots stay as they were)
            out[ev.FI_DIST_HANG_DOCTOR] = flag(False)
        return out

    def shown_env(self) -> dict[str, str]:
        """:meth:`to_env` for a dry-run's output: the token is not printed."""
        env = self.to_env()
        if ev.FI_DIST_DEBUG_TOKEN in env:
            env[ev.FI_DIST_DEBUG_TOKEN] = "<the job token, made at run time>"
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobContract:
        """Read the contract back (``os.environ`` by default).

        A process no fi-dist launcher started (plain torchrun, a Flyte pod) gets the
        defaults and the launcher it was detected under.

        Raises:
            InconsistentEnvError: a variable that does not parse; names it and its value.
        """
        env = os.environ if env is None else env
        r = _Reader(env)
        names = [n for n in (r.raw(ev.FI_DIST_USER_ENV) or "").split(",") if n]
        network = r.text(ev.FI_DIST_NETWORK, "loopback")
        if network not in NETWORKS:
            raise InconsistentEnvError(f"{ev.FI_DIST_NETWORK}={network!r} is not one of "
                                       f"{', '.join(NETWORKS)}")
        return cls(
            launcher=detect_launcher(env),
            run_id=r.text(ev.FI_DIST_RUN_ID, ""),
            run_dir=r.raw(ev.FI_DIST_RUN_DIR),
            attempt=r.integer(ev.FI_DIST_ATTEMPT, 0),
            max_restarts=r.integer(ev.FI_DIST_MAX_RESTARTS, 0),
            grace_period=r.number(ev.FI_DIST_GRACE_PERIOD, _JOB_GRACE),
            checkpoint_dir=r.raw(ev.FI_DIST_CKPT_DIR),
            debug=DebugSettings.from_env(env),
            idle=idle_from_env(env),
            env=tuple((n, env.get(n, "")) for n in names),
            network=network,
            heartbeat=r.raw(ev.FI_DIST_HEARTBEAT),
            lifeline_fd=(None if r.raw(ev.FI_DIST_LIFELINE_FD) is None
                         else r.integer(ev.FI_DIST_LIFELINE_FD, -1)),
            owner=r.text(ev.FI_DIST_OWNER, ""),
            hang_doctor=r.boolean(ev.FI_DIST_HANG_DOCTOR, True),
        )

    def replace(self, **changes: Any) -> JobContract:
        return dataclasses.replace(self, **changes)


_current: JobContract | None = None


def current() -> JobContract:
    """This process's contract, read from ``os.environ`` once."""
    global _current
    if _current is None:
        _current = JobContract.from_env()
    return _current


def reset_current() -> None:
    """Forget the cached contract (a process that changed its own env, and tests)."""
    global _current
    _current = None
