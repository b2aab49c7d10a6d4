"""One rank's interactive session for ``@interactive_pytorch`` (runs inside the job).

Rank 0 of node 0 owns the job's only debug hub, code-server and resume endpoint; every
other rank finds them through the job's rendezvous store and registers with the hub.
The store is torchelastic's agent store under torchrun (an Elastic task); in pods that
run the task themselves (a ``PyTorch(num_workers=N)`` task: no torchrun) rank 0 hosts
it at ``MASTER_ADDR:MASTER_PORT`` and ``init_process_group("env://")`` reuses it
(:func:`open_store`). Keys carry the restart count, so a restarted worker group never
reads the previous attempt's ports.

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
import uuid
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
    from fi_dist.runtime.idle.task import TaskCuller

log = logging.getLogger("fi_dist.interactive")

RESUME_CONFIG_NAME = "fi-dist: resume all ranks"


STORE_TIMEOUT = timedelta(seconds=900)
"""How long a rank waits for rank 0's store (pods start minutes apart: image pulls)."""


def restart_count() -> int:
    return int(os.environ.get(ev.TORCHELASTIC_RESTART_COUNT, "0") or 0)


def restarts_left() -> int | None:
    """Restarts a resume can still use: torchelastic's worker-group restarts plus the
    launcher's whole-job restarts (``fi-dist run --max-restarts``); None where nobody
    says (a pod restarted by its operator's restart policy: a Flyte PyTorch task)."""
    job = contract.current()
    elastic = ev.TORCHELASTIC_MAX_RESTARTS in os.environ
    if not elastic and not job.run_id:
        return None
    left = job.max_restarts - job.attempt
    if elastic:
        left += int(os.environ.get(ev.TORCHELASTIC_MAX_RESTARTS) or 0) - restart_count()
    return left


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
    """The job's rendezvous store, through which rank 0 tells the others where the hub is.

    * under torchrun (an Elastic task, ``fi-dist run``): a client of torchelastic's agent
      store;
    * several ranks without torchrun (a ``PyTorch(num_workers=N)`` task: each pod runs
      the task with the operator's MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE): rank 0
      hosts the store at MASTER_PORT, the others connect. It is a *multi-tenant* server,
      which ``init_process_group("env://")`` (and ``tcp://``) on rank 0 joins instead of
      binding the port again, so the task's own rendezvous runs on it unchanged;
    * one process: an in-process store.
    """
    import torch.distributed as dist

    if os.environ.get(ev.TORCHELASTIC_USE_AGENT_STORE) == "True":
        return dist.TCPStore(env.master_addr, env.master_port, is_master=False,
                             timeout=timedelta(seconds=300), wait_for_workers=False)
    if env.world_size == 1:
        return dist.HashStore()
    if env.rank == 0:
        return dist.TCPStore(env.master_addr, env.master_port, is_master=True,
                             multi_tenant=True, wait_for_workers=False, timeout=STORE_TIMEOUT)
    return dist.TCPStore(env.master_addr, env.master_port, is_master=False,
                         timeout=STORE_TIMEOUT)


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
        self.culler: TaskCuller | None = None
        self._run_dir: rundir.RunDir | None = None
        self._last_activity = time.monotonic()
        self._activity_shared = 0.0

    @property
    def is_owner(self) -> bool:
        return self.env.rank == 0

    # --- opening -------------------------------------------------------------------------
    def open(self) -> None:
        self._start_culler()
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

    def _start_culler(self) -> None:
        """The idle culler of this rank's pod, unless one outside the ranks watches it (a
        node agent's, a Ray node's): the contract's settings (FI_DIST_IDLE_*) or the
        decorator's (``max_idle_seconds``, ``idle=``)."""
        from fi_dist.runtime.idle import task

        job = contract.current()
        if os.environ.get(ev.FI_DIST_IDLE_WATCHER):
            return
        spec = job.idle or self.cfg.idle_spec
        # One process alone (no run id to share a directory by): a directory of its own.
        run_dir = task.pod_run_dir(self.env, self.scope.run_id or uuid.uuid4().hex)
        culler = task.TaskCuller(spec, self.env, run_dir, job.grace_period, self._job_activity,
                                 owns_run_dir=not job.run_dir)
        if reason := culler.culled():
            # This pod was culled before this worker group's restart (an Elastic agent
            # restarts failed workers): the task stays ended.
            raise task.IdleCulledError(culler.message(reason))
        self._run_dir = run_dir
        self._record_rank(state="running", started=time.time())
        self.culler = culler.start()

    def _record_rank(self, **fields: Any) -> None:
        # Where no rank_main wrote the rank's record (a pod running the task itself).
        if self._run_dir is None:
            return
        own = self._run_dir.ranks().get(self.env.rank, {}).get("pid") == os.getpid()
        if fields.get("state") == "running" and own:
            self._run_dir = None  # rank_main keeps this rank's record
            return
        self._run_dir.write_rank(self.env.rank, node=self.env.node_rank,
                                 local_rank=self.env.local_rank, pid=os.getpid(),
                                 addr=self.env.node_addr, **fields)

    def _job_activity(self) -> float | None:
        """When rank 0's code-server last saw a user (published on the job's store)."""
        if self.store is None:
            return None
        key = self.prefix + "activity"
        with contextlib.suppress(Exception):
            if self.store.check([key]):
                return float(self.store.get(key))
        return None

    def _start_debugger(self) -> None:
        from fi_dist.runtime.debug import agent, timeouts

        settings = DebugSettings(token=self.token, rank_port=int(self.info["rank_port"]))
        os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        timeouts.apply(settings.pg_timeout)
        agent.start(self.env, settings, hub_host=self.info["host"])

    def _start_code_server(self) -> None:
        from fi_dist.runtime import codeserver

        host = self.cfg.bind_address
        # Beyond loopback (the Flyte console's link goes through a proxy to the pod's IP)
        # nobody there can read the session file: the login is the job token, which the
        # user has (the Secret they made) and which already grants everything it would.
        # The fi-dist extension (debug type fi-dist, Ranks view) and the user's .vsix
        # files are installed offline from the package and the given paths.
        cfg = codeserver.workspace_config(
            self.root, self.cfg.port, self.cfg.extensions, host=host,
            password=None if host.startswith("127.") else self.token)
        try:
            binary = Path(self.cfg.code_server) if self.cfg.code_server else None
            self.code_server = codeserver.start(cfg, binary)
        except RuntimeError as exc:
            print(f"fi-dist: code-server did not start: {exc}", file=sys.stderr, flush=True)
        if self.code_server is not None:
            self.code_server.feed_activity(self._activity)
            where = (f"password in {self.root / resume.SESSION_FILE}; port-forward it to "
                     "reach it" if host.startswith("127.") else "log in with the job token; "
                     "the Flyte console links to it")
            print(f"fi-dist: code-server on {self.code_server.url} ({where})",
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
        now = time.time()
        if self.store is not None and now - self._activity_shared >= 5.0:
            # Every pod's culler reads it: a user editing on rank 0 keeps the whole job.
            self._activity_shared = now
            with contextlib.suppress(Exception):
                self.store.set(self.prefix + "activity", repr(now))

    def _status(self) -> dict[str, Any]:
        failed = None
        with contextlib.suppress(Exception):
            if self.store.check([self.prefix + "failed"]):
                failed = self.store.get(self.prefix + "failed").decode()
        return {"failed": failed, "restart_count": restart_count(),
                "restarts_left": restarts_left()}

    def _why_no_restart(self) -> str | None:
        left = restarts_left()
        if self.env.world_size > 1 and left is not None and left <= 0:
            return (f"no restart left ({ev.TORCHELASTIC_MAX_RESTARTS}="
                    f"{os.environ.get(ev.TORCHELASTIC_MAX_RESTARTS, '0')}, restart "
                    f"{restart_count()}, job attempt {contract.current().attempt} of "
                    f"{contract.current().max_restarts} restarts): give the task "
                    "Elastic(max_restarts>=1), torchrun or fi-dist run --max-restarts so the "
                    "ranks can re-enter with the edited code")
        return None

    def _on_resume(self, gen: int, written: list[str]) -> None:
        print(f"fi-dist: {self.env.label()}: resume generation {gen} ({len(written)} file(s) "
              "updated here); restarting with the edited code", file=sys.stderr, flush=True)
        self.close(exitcode=resume.RESUME_EXIT_CODE)
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
        # With the culler on, it decides when nobody came (its idea of activity spans the
        # job); the wait's own bound is the fallback without one.
        culling = self.culler is not None and not self.culler.spec.dry_run
        while culling or time.monotonic() - self._last_activity < self.cfg.max_idle_seconds:
            if connected:
                import debugpy

                if debugpy.is_client_connected():
                    self._activity()
            time.sleep(0.2)
        print(f"fi-dist: {label}: no resume within {self.cfg.max_idle_seconds:g}s idle; "
              "failing the task", file=sys.stderr, flush=True)

    def close(self, failed: BaseException | None = None, exitcode: int = 0) -> None:
        if failed is None:
            self._record_rank(state="exited", exitcode=exitcode, ended=time.time())
        else:
            self._record_rank(state="failed", exitcode=1, ended=time.time(),
                              error=f"{type(failed).__name__}: {failed}")
        if self.culler is not None:
            self.culler.stop()
        if self.watcher is not None:
            self.watcher.stop()
        if self.code_server is not None:
            self.code_server.stop()
        if self.server is not None:
            self.server.close()
        if self.hub is not None:
            self.hub.stop()
