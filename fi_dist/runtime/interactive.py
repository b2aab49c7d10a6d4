"""One rank's interactive session for ``@interactive_pytorch`` (runs inside the job).

Rank 0 of node 0 owns the job's only debug hub, code-server and resume endpoint; every
other rank finds them through the job's rendezvous store (torchelastic's agent store,
reachable from every node) and registers with the hub. Keys carry the restart count, so
a restarted worker group never reads the previous attempt's ports.

The store is readable and writable by anyone who reaches its port, so only addresses
go on it, never the job token: every rank gets the token from its environment
(:func:`job_token`), and resume generations are signed with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fi_dist import contract, rundir
from fi_dist import env_vars as ev
from fi_dist.contract import DebugSettings
from fi_dist.errors import ConfigError
from fi_dist.launchjson import PRIVATE_MODE, LaunchJsonError, write_configuration
from fi_dist.runtime import generation, heartbeat, resume
from fi_dist.runtime.environment import RankEnvironment

if TYPE_CHECKING:
    from fi_dist.integrations.flyte import InteractiveConfig
    from fi_dist.runtime.codeserver import CodeServer
    from fi_dist.runtime.debug.hub_process import HubProcess

log = logging.getLogger("fi_dist.interactive")

RESUME_CONFIG_NAME = "fi-dist: resume all ranks"


def restart_count() -> int:
    return int(os.environ.get(ev.TORCHELASTIC_RESTART_COUNT, "0") or 0)


def restarts_left() -> int:
    return int(os.environ.get(ev.TORCHELASTIC_MAX_RESTARTS, "0") or 0) - restart_count()


class NoJobTokenError(ConfigError):
    """Several ranks need one job token and the environment does not give them one."""


def job_token(env: RankEnvironment, local_token: str | None = None) -> str:
    """The token every rank of the job shares: hub handshake, resume endpoint, signatures.

    In order: ``FI_DIST_DEBUG_TOKEN`` (a cluster mounts it from a Secret on every pod,
    ``fi-dist run --debug`` sets it on every node); ``local_token``, one that the process
    which started this node's ranks handed to all of them in memory (the decorator's
    pickle: a flytekit Elastic task's workers), used only when the job is this one node;
    a fresh one when this process is the whole job (world size 1: no other rank needs it).

    Raises:
        NoJobTokenError: several ranks and no shared token; the message says how to give one.
    """
    token = os.environ.get(ev.FI_DIST_DEBUG_TOKEN)
    if token:
        return token
    if env.world_size == 1:
        return contract.new_token()
    if local_token and env.nnodes == 1:
        return local_token
    raise NoJobTokenError(
        f"@interactive_pytorch on {env.world_size} ranks over {env.nnodes} node(s) needs the "
        f"job token in {ev.FI_DIST_DEBUG_TOKEN}, the same on every node (mount it from a "
        "Kubernetes Secret, see docs/flyte.md; `fi-dist run --debug` sets it). It is never "
        "sent through the rendezvous store, which anyone reaching its port can read and "
        "write, so without it the session and resume are refused.")


def fresh_store_namespace() -> None:
    """Give ``init_process_group(env://)`` a key prefix per worker-group restart.

    torchelastic's c10d rendezvous keeps ONE TCPStore server across restarts and env://
    uses it without a per-attempt prefix, so restarted ranks would read the previous
    attempt's gloo addresses ("connectFullMesh failed ... Connection refused"). Only
    needed after a restart, which is what a resume is.
    """
    attempt = restart_count()
    if attempt == 0 or os.environ.get(ev.TORCHELASTIC_USE_AGENT_STORE) != "True":
        return
    import importlib

    import torch.distributed as dist

    # `torch.distributed.rendezvous` the attribute is a function; the module is this one.
    rdzv = importlib.import_module("torch.distributed.rendezvous")
    original = rdzv._create_c10d_store
    if getattr(original, "__fi_dist__", False):
        return

    def create(*args: Any, **kwargs: Any) -> Any:
        return dist.PrefixStore(f"fi_dist/attempt_{attempt}/", original(*args, **kwargs))

    create.__fi_dist__ = True  # type: ignore[attr-defined]
    rdzv._create_c10d_store = create  # type: ignore[attr-defined]


def open_store(env: RankEnvironment) -> Any:
    """A client of the job's rendezvous store; an in-process store for a single process."""
    import torch.distributed as dist

    if os.environ.get(ev.TORCHELASTIC_USE_AGENT_STORE) == "True":
        return dist.TCPStore(env.master_addr, env.master_port, is_master=False,
                             timeout=timedelta(seconds=300), wait_for_workers=False)
    if env.world_size == 1:
        return dist.HashStore()
    raise RuntimeError("@interactive_pytorch needs torchelastic's agent store to find rank 0 "
                       "(run the ranks with torchrun, fi-dist run or a flytekit Elastic task; "
                       f"{ev.TORCHELASTIC_USE_AGENT_STORE} is not True here)")


def resume_launch_config(python: str) -> dict[str, Any]:
    """The launch.json entry that triggers a resume (VSCode's built-in terminal launcher)."""
    return {"name": RESUME_CONFIG_NAME, "type": "node-terminal", "request": "launch",
            "command": f"{python} -m fi_dist.cli resume", "cwd": "${workspaceFolder}"}


class Session:
    """What one rank runs around the training function when the decorator is enabled."""

    def __init__(self, cfg: InteractiveConfig, root: Path, local_token: str | None = None
                 ) -> None:
        self.cfg = cfg
        self.root = root
        self.env = RankEnvironment.from_env()
        self.token = job_token(self.env, local_token)  # before anything starts: refuse early
        self.scope = generation.Scope.from_env()
        self.prefix = f"fi_dist/interactive/{restart_count()}/"
        self.store: Any = None
        self.hub: HubProcess | None = None
        self.code_server: CodeServer | None = None
        self.server: resume.ResumeServer | None = None
        self.watcher: resume.Watcher | None = None
        self.debugged = cfg.ranks is None or self.env.rank in cfg.ranks
        self.info: dict[str, Any] = {}
        self._last_activity = time.monotonic()

    @property
    def is_owner(self) -> bool:
        return self.env.rank == 0

    # --- opening -------------------------------------------------------------------------
    def open(self) -> None:
        self.store = open_store(self.env)
        under_hub = contract.current().debug is not None  # fi-dist run --debug: hub exists
        if self.is_owner:
            self._open_owner(under_hub)
        else:
            self.store.wait([self.prefix + "hub"])
            self.info = json.loads(self.store.get(self.prefix + "hub"))
        if self.debugged and not under_hub:
            self._start_debugger()
        self.watcher = resume.Watcher(self.store, self.root, self.token, self.scope,
                                      self._on_resume, label=self.env.label()).start()
        if self.debugged and self.cfg.wait_for_client:
            from fi_dist.runtime.debug import agent

            agent.wait_for_client()

    def _open_owner(self, under_hub: bool) -> None:
        token = self.token
        info: dict[str, Any] = {}  # goes on the store: addresses only, never the token
        if not under_hub:
            from fi_dist.runtime.debug import hub_process

            rank_host = "127.0.0.1" if self.env.nnodes == 1 else self.env.node_addr
            settings = DebugSettings(token=token, ide_host="127.0.0.1",
                                     ide_port=self.cfg.debug_port, rank_port=0)
            self.hub = hub_process.start(settings, rank_host, cwd=str(self.root))
            info = {"host": rank_host, "rank_port": self.hub.rank_port,
                    "ide_port": self.hub.ide_port}
        self.info = info
        before = resume.snapshot(self.root)
        self.server = resume.ResumeServer(self.store, self.root, token, self.scope, before,
                                          self._why_no_restart, status=self._status).start()
        if not self.cfg.run_task_first:
            self._start_code_server()
        else:  # post-mortem only: code-server comes up when a rank fails
            threading.Thread(target=self._code_server_on_failure, daemon=True).start()
        self._write_session()
        self.store.set(self.prefix + "hub", json.dumps(info))

    def _start_debugger(self) -> None:
        from fi_dist.runtime.debug import agent, timeouts

        settings = DebugSettings(token=self.token, rank_port=int(self.info["rank_port"]))
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        timeouts.apply(settings.pg_timeout)
        agent.start(self.env, settings, hub_host=self.info["host"])

    def _start_code_server(self) -> None:
        from fi_dist.runtime import codeserver

        # The fi-dist extension (debug type fi-dist, Ranks view) and the user's .vsix
        # files, installed offline from the package and the given paths.
        cfg = codeserver.workspace_config(self.root, self.cfg.port, self.cfg.extensions)
        try:
            binary = Path(self.cfg.code_server) if self.cfg.code_server else None
            self.code_server = codeserver.start(cfg, binary)
        except RuntimeError as exc:
            print(f"fi-dist: code-server did not start: {exc}", file=sys.stderr, flush=True)
        if self.code_server is not None:
            self.code_server.feed_activity(self._activity)
            print(f"fi-dist: code-server on {self.code_server.url} (password in "
                  f"{self.root / resume.SESSION_FILE}); port-forward it to reach it",
                  file=sys.stderr, flush=True)
            self._write_session()

    def _code_server_on_failure(self) -> None:
        while True:
            try:
                if self.store.check([self.prefix + "failed"]):
                    break
            except Exception:
                return
            time.sleep(0.3)
        self._start_code_server()

    def _write_session(self) -> None:
        cs = self.code_server
        data = {"token": self.token, "resume_url": self.server.url if self.server else None,
                "code_server_url": cs.url if cs else None,
                "code_server_password": cs.cfg.password if cs else None,
                "hub_port": self.info.get("ide_port"), "source_root": str(self.root),
                "restart_count": restart_count()}
        rundir.write_text_atomic(self.root / resume.SESSION_FILE, json.dumps(data, indent=2),
                                 PRIVATE_MODE)
        try:  # beside the hub's attach configuration; a file we cannot edit stays as it is
            write_configuration(self.root, resume_launch_config(sys.executable))
        except (LaunchJsonError, OSError) as exc:
            log.warning("fi-dist: launch.json not updated: %s", exc)

    # --- activity, status, resume ----------------------------------------------------------
    def _activity(self) -> None:
        self._last_activity = time.monotonic()
        heartbeat.current().debug_activity()

    def _status(self) -> dict[str, Any]:
        failed = None
        with contextlib.suppress(Exception):
            if self.store.check([self.prefix + "failed"]):
                failed = self.store.get(self.prefix + "failed").decode()
        return {"failed": failed, "restart_count": restart_count(),
                "restarts_left": restarts_left()}

    def _why_no_restart(self) -> str | None:
        if self.env.world_size > 1 and restarts_left() <= 0:
            return (f"no restart left ({ev.TORCHELASTIC_MAX_RESTARTS}="
                    f"{os.environ.get(ev.TORCHELASTIC_MAX_RESTARTS, '0')}, restart "
                    f"{restart_count()}): give the task Elastic(max_restarts>=1) or torchrun "
                    "--max-restarts so the ranks can re-enter with the edited code")
        return None

    def _on_resume(self, gen: int, written: list[str]) -> None:
        print(f"fi-dist: {self.env.label()}: resume generation {gen} ({len(written)} file(s) "
              "updated here); restarting with the edited code", file=sys.stderr, flush=True)
        self.close()
        sys.stdout.flush()
        os._exit(resume.RESUME_EXIT_CODE)

    def post_mortem(self, exc: BaseException) -> None:
        """A rank raised: stop in the debugger if a client is there, then wait for a resume.

        Returns (the caller re-raises) when no resume came within ``max_idle_seconds`` of
        the last activity; a resume ends the process from the watcher thread.
        """
        with contextlib.suppress(Exception):
            self.store.set(self.prefix + "failed", str(self.env.rank))
        label = self.env.label()
        print(f"fi-dist: {label} raised {type(exc).__name__}: {exc}; post-mortem: fix the code "
              "and resume ('fi-dist: resume all ranks' or `fi-dist resume`)", file=sys.stderr,
              flush=True)
        heartbeat.current().state(f"post-mortem: {type(exc).__name__}, waiting for resume")
        connected = False
        if self.debugged:
            import debugpy

            from fi_dist.runtime.debug import agent

            rank_agent = agent.current()
            if rank_agent is not None:  # the hub's Ranks view and status say post-mortem
                rank_agent.send({"event": "post-mortem", "error_type": type(exc).__name__,
                                 "error": f"{type(exc).__name__}: {exc}"})
            if debugpy.is_client_connected():
                connected = True
                debugpy.trigger_exception_handler(exc, as_uncaught=True)
        self._last_activity = time.monotonic()
        while time.monotonic() - self._last_activity < self.cfg.max_idle_seconds:
            if connected:
                import debugpy

                if debugpy.is_client_connected():
                    self._activity()
            time.sleep(0.2)
        print(f"fi-dist: {label}: no resume within {self.cfg.max_idle_seconds:g}s idle; "
              "failing the task", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        if self.code_server is not None:
            self.code_server.stop()
        if self.server is not None:
            self.server.close()
        if self.hub is not None:
            self.hub.stop()
