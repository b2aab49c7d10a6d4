"""The Ray driver: rank actors and the backend the supervisor runs them with (imports ray).

Runs in ``fi-dist run --launcher ray`` (this machine's Ray, or ``$RAY_ADDRESS``) and,
for a KubeRay RayJob, inside the cluster (the RayJob's entrypoint is
``python -m fi_dist.launchers.ray SPEC_JSON``). A Ray node that disappears (preemption) kills
its actors; the attempt then ends as preempted (143) and, within ``max_restarts``, the
supervisor starts the job again: the script resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.console import PlainView, TeeView
from fi_dist.contract import (
    HUB_READY,
    IDLE_EXIT_CODE,
    IDLE_READY,
    JobContract,
    hub_command,
    idle_command,
    rank_command,
)
from fi_dist.errors import LauncherError
from fi_dist.summary import Summary, summarize_ranks
from fi_dist.supervisor import Backend, Supervisor

from .ray_plan import (
    LOCAL_OBJECT_STORE_BYTES,
    LOCAL_RAY_ENV,
    PREEMPTED_EXIT,
    RayRequest,
    rank_env,
)

_PR_SET_PDEATHSIG = 1
POLL_TIMEOUT = 30.0
"""Seconds a rank actor may take to answer a poll before its node counts as lost."""


def _die_with_actor() -> None:
    # If Ray kills the actor's worker (node lost, job cancelled) the rank goes with it.
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RankActor:
    """Owns one rank process on its Ray node; methods run on a small thread pool.

    The Ray counterpart of a node agent, for one rank: it starts the rank (and, for
    rank 0 of a ``--debug`` job, the hub) by their command lines, so the driver
    never imports the in-job runtime.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: threading.Thread | None = None
        self.hub: procs.ReadyProcess | None = None
        self.culler: procs.ReadyProcess | None = None
        self.lines: deque[str] = deque()

    def start_hub(self, env: dict[str, str], cwd: str) -> None:
        """Start the debug hub beside rank 0 (this actor is rank 0's, on rank 0's node)."""
        full = {**os.environ, **env}
        self.hub = procs.start_ready(hub_command(ray.util.get_node_ip_address()), HUB_READY,
                                     env=full, cwd=cwd if os.path.isdir(cwd) else None)

    def start_culler(self, node: int, env: dict[str, str], cwd: str) -> None:
        """Start node ``node``'s idle culler on this Ray node (this actor is the node's
        first rank's); it watches the ranks the run directory lists for the node."""
        full = {**os.environ, **env}
        self.culler = procs.start_ready(idle_command(node), IDLE_READY, env=full,
                                        cwd=cwd if os.path.isdir(cwd) else None)

    def stop_culler(self) -> None:
        if self.culler is not None:
            self.culler.stop()
            self.culler = None

    def where(self) -> tuple[str, str]:
        """(node id, node IP) of this actor."""
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind((ray.util.get_node_ip_address(), 0))
            return int(s.getsockname()[1])

    def start(self, argv: list[str], env: dict[str, str], cwd: str) -> int:
        full = {**os.environ, **env}
        # Ray points breakpoint() at its own debugger in workers (PYTHONBREAKPOINT, and
        # RAY_DEBUG=1 by default in 2.60). The rank is not a Ray worker: without these,
        # breakpoint() is Python's, which debugpy replaces under --debug (the hub's IDE).
        if full.get("PYTHONBREAKPOINT", "").startswith("ray."):
            del full["PYTHONBREAKPOINT"]
        full.pop("RAY_DEBUG", None)
        self.proc = subprocess.Popen(argv, env=full, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     preexec_fn=_die_with_actor)
        self.pump = threading.Thread(target=self._pump, daemon=True)
        self.pump.start()
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def poll(self) -> tuple[list[str], int | None]:
        """New output lines and the exit code (None while running)."""
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        code = self.proc.poll() if self.proc else None
        if code is not None and ((self.pump is not None and self.pump.is_alive())
                                 or self.lines):
            code = None  # exited, but its last lines are still on their way
        if code is not None and code < 0:
            code = 128 - code  # killed by a signal: report it like a shell (143 = SIGTERM)
        return out, code

    def stop_hub(self) -> None:
        if self.hub is not None:
            self.hub.stop()
            self.hub = None

    def terminate(self, grace: float) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _bounded(fn: Any, *args: Any, timeout: float = 15.0) -> None:
    """Call ``fn`` but give up after ``timeout``: after a SIGTERM to the whole process
    group (``timeout``, CI) the local raylet may be gone and Ray calls block forever."""
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    t.join(timeout)


def ensure_ray(num_cpus: int) -> bool:
    """Connect to ``$RAY_ADDRESS`` or start a small loopback Ray; True if we started it."""
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False,
                 configure_logging=False)
        return False
    if any(os.environ.get(k) != v for k, v in LOCAL_RAY_ENV.items()):
        raise LauncherError(f"a local Ray must be started with {LOCAL_RAY_ENV} in the "
                            "environment before ray is imported (it would listen beyond "
                            "loopback)")
    for attempt in range(1, 4):
        try:
            ray.init(num_cpus=num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
            return True
        except Exception as exc:
            # Ray 2.60 gives a new raylet a fixed 30 s to register; a loaded machine
            # misses that now and then. Start over (a clean shutdown first).
            if "timed out during startup" not in str(exc) or attempt == 3:
                raise
            print(f"fi-dist: Ray did not start in time ({exc}); retrying ({attempt}/2)",
                  file=sys.stderr)
            ray.shutdown()
    return True


class RayBackend(Backend):
    """Units are ranks, one actor each, in a placement group per attempt."""

    def __init__(self, req: RayRequest, run_dir: rundir.RunDir, view: PlainView) -> None:
        self.req = req
        self.spec = req.spec
        self.run_dir = run_dir
        self.view = view
        # One token for the whole run (from_spec made it): an IDE stays attached across
        # restarts.
        self.job: JobContract = req.job.replace(run_id=run_dir.run_id,
                                                run_dir=str(run_dir.path))
        self.started_ray = False
        self.pg: Any = None
        self.actors: list[Any] = []
        self.seen: dict[int, float] = {}
        self.lost: set[int] = set()

    def node_of(self, unit: int) -> int:
        return unit // self.spec.nproc_per_node

    def open(self) -> None:
        self.started_ray = ensure_ray(max(self.spec.world_size, 1))

    def close(self) -> None:
        if self.started_ray:
            _bounded(ray.shutdown)

    def start(self, attempt: int) -> list[int]:
        self.pg = placement_group(self.req.bundles, strategy="SPREAD")
        if not self.pg.wait(timeout_seconds=120):
            raise LauncherError(f"Ray could not place {len(self.req.bundles)} bundles "
                                f"{self.req.bundles[1:2] or self.req.bundles}: "
                                f"cluster resources are {ray.cluster_resources()}")
        actor_cls = ray.remote(RankActor)
        slot = {"num_gpus": 1} if self.spec.resources.gpus else {"num_cpus": 1}
        self.actors = [actor_cls.options(
            max_concurrency=4, max_restarts=0, **slot,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=r.node)).remote()
            for r in self.req.ranks]
        where = ray.get([a.where.remote() for a in self.actors])
        master = (where[0][1], ray.get(self.actors[0].free_port.remote()))
        self.run_dir.update_run(master=f"{master[0]}:{master[1]}",
                                placement={str(r.rank): {"node_id": w[0], "ip": w[1]}
                                           for r, w in zip(self.req.ranks, where, strict=True)})
        job = self.job.replace(attempt=attempt)
        if job.debug is not None and attempt == 0:
            # The hub's rank port on rank 0's node; its IDE port is the spec's.
            port = ray.get(self.actors[0].free_port.remote())
            self.job = job = job.replace(debug=dataclasses.replace(job.debug, rank_port=port))
        job_env = job.to_env()
        envs = [{**job_env, **rank_env(self.spec, r, master, ip)}
                for r, (_, ip) in zip(self.req.ranks, where, strict=True)]
        if job.debug is not None:
            ray.get(self.actors[0].start_hub.remote(envs[0], os.getcwd()))
        if job.idle is not None:  # one culler per node, beside the node's first rank
            for i, r in enumerate(self.req.ranks):
                envs[i][ev.FI_DIST_IDLE_WATCHER] = f"ray node {r.node}"
                if r.local_rank == 0:
                    ray.get(self.actors[i].start_culler.remote(r.node, envs[i], os.getcwd()))
        argv = rank_command(self.spec.script, self.spec.script_args,
                            module=self.spec.module, no_python=self.spec.no_python)
        for a, env in zip(self.actors, envs, strict=True):
            ray.get(a.start.remote(argv, env, os.getcwd()))
        self.seen = {}
        self.lost = set()
        return [r.rank for r in self.req.ranks]

    def poll(self, timeout: float) -> tuple[list[tuple[int, str]], dict[int, int]]:
        time.sleep(timeout)
        lines: list[tuple[int, str]] = []
        ended: dict[int, int] = {}
        for r, actor in zip(self.req.ranks, self.actors, strict=True):
            if r.rank in self.seen:
                continue
            try:
                out, code = ray.get(actor.poll.remote(), timeout=POLL_TIMEOUT)
            except (RayActorError, GetTimeoutError) as exc:
                self.view.message(f"fi-dist: rank {r.rank} (node {r.node}) lost its Ray actor "
                                  f"({type(exc).__name__}): treating it as preempted")
                out, code = [], PREEMPTED_EXIT
                self.lost.add(r.rank)
            lines += [(r.node, f"[node{r.node} rank{r.rank}] {text}") for text in out]
            if code is not None and r.node in self.culled():
                code = IDLE_EXIT_CODE  # ended by its node's culler: final, not retried
            if code is not None:
                ended[r.rank] = code
                self.seen[r.rank] = time.time()
        return lines, ended

    def terminate(self, grace: float) -> None:
        for r, actor in zip(self.req.ranks, self.actors, strict=True):
            if r.rank not in self.seen:
                with contextlib.suppress(RayActorError):
                    actor.terminate.remote(grace)

    def culled(self) -> dict[int, str]:
        """Nodes their idle culler ended, with its reason."""
        return {n: str(d.get("reason") or "idle") for n, d in self.run_dir.node_idle().items()
                if d.get("ended_at") is not None and not d.get("dry_run")}

    def summarize(self, exits: dict[int, int | None]) -> Summary:
        notes = {r.rank: f"ended by the idle culler: {reason}" for r in self.req.ranks
                 if (reason := self.culled().get(r.node))}
        return summarize_ranks(self.run_dir, self.spec.nproc_per_node, exits, self.seen,
                               self.lost, notes)

    def end_attempt(self) -> None:
        if self.job.debug is not None and self.actors:
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(self.actors[0].stop_hub.remote(), timeout=30)
        if self.job.idle is not None:
            for r, a in zip(self.req.ranks, self.actors, strict=True):
                if r.local_rank == 0:
                    with contextlib.suppress(RayActorError, GetTimeoutError):
                        ray.get(a.stop_culler.remote(), timeout=30)
        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        self.actors = []
        # Whatever of this run is left on this machine (a hub whose actor was lost).
        procs.terminate(self.job.run_id, grace=3.0)
        if self.pg is not None:
            _bounded(remove_placement_group, self.pg)
            self.pg = None


def supervise(req: RayRequest, run_dir: rundir.RunDir, view: PlainView) -> int:
    """Run the job under the common supervisor; its output also goes to logs/ray.log."""
    run_dir.logs.mkdir(parents=True, exist_ok=True)
    with TeeView(view, run_dir.logs / "ray.log") as tee:
        return Supervisor(req.spec, RayBackend(req, run_dir, tee), tee, run_dir).run()
