"""The Ray side of the Ray launcher: rank actors and the driver loop (imports ray).

Kept apart from :mod:`fi_dist.launchers.ray` so that dry-runs and ``import`` of the
launcher never import ray.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.errors import LauncherError
from fi_dist.launcher import JobState
from fi_dist.launchers.ray import (
    LOCAL_OBJECT_STORE_BYTES,
    LOCAL_RAY_ENV,
    PREEMPTED_EXIT,
    RayRequest,
    rank_env,
)

_PR_SET_PDEATHSIG = 1


def _die_with_actor() -> None:
    # If Ray kills the actor's worker (node lost, job cancelled) the rank goes with it.
    import ctypes

    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class RankActor:
    """Owns one rank process on its Ray node; methods run on a small thread pool."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: threading.Thread | None = None
        self.hub: Any = None
        self.lines: deque[str] = deque()

    def start_hub(self, env: dict[str, str], cwd: str) -> None:
        """Start the debug hub beside rank 0 (this actor is rank 0's, on rank 0's node).

        The hub inherits this process's env and writes launch.json in its working
        directory, so both are set first; the actor serves this one rank only.
        """
        from fi_dist.runtime.debug import hub_process
        from fi_dist.runtime.environment import NodeEnvironment

        os.environ.update(env)
        if os.path.isdir(cwd):
            os.chdir(cwd)
        self.hub = hub_process.start(NodeEnvironment.from_env())

    def where(self) -> tuple[str, str]:
        """(node id, node IP) of this actor."""
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind((ray.util.get_node_ip_address(), 0))
            return s.getsockname()[1]

    def start(self, argv: list[str], env: dict[str, str], cwd: str) -> int:
        full = {**os.environ, **env}
        # Ray points breakpoint() at its own debugger in workers (PYTHONBREAKPOINT, and
        # RAY_DEBUG=1 by default in 2.60). The rank is not a Ray worker: without these,
        # breakpoint() is Python's, which debugpy replaces under --debug (the hub's IDE).
        if full.get("PYTHONBREAKPOINT", "").startswith("ray."):
            del full["PYTHONBREAKPOINT"]
        full.pop("RAY_DEBUG", None)
        self.proc = subprocess.Popen([sys.executable, *argv], env=full, cwd=cwd,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_actor)
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
        if code is not None and (self.pump.is_alive() or self.lines):
            code = None  # exited, but its last lines are still on their way
        if code is not None and code < 0:
            code = 128 - code  # killed by a signal: report it like a shell (143 = SIGTERM)
        return out, code

    def stop_hub(self) -> None:
        from fi_dist.runtime.debug import hub_process

        hub_process.stop(self.hub)
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


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


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


class RayRun:
    """One ``fi-dist run --launcher ray``: attempts until success, failure or stop."""

    def __init__(self, req: RayRequest, run: rundir.RunDir, out: Any) -> None:
        self.req = req
        self.spec = req.spec
        self.run_dir = run
        self.run_id = run.run_id
        self.out = out
        self.exitcode = 1
        self.attempts = 0
        self._log = None
        # One token for the whole run: an IDE stays attached across restarts.
        self._token = secrets.token_hex(16)

    def _print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()
        if self._log:
            self._log.write(text + "\n")
            self._log.flush()

    def run(self) -> None:
        started = ensure_ray(max(self.spec.world_size, 1))
        # SIGTERM (a CI timeout, `kill`) must unwind like Ctrl-C: the actors are killed
        # (their ranks die with them) and a Ray started here is shut down, not leaked.
        # Installed after ray.init, which puts its own crash handler on SIGTERM.
        old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self._run(started)
        except KeyboardInterrupt as exc:
            self.exitcode = 143 if "signal" in str(exc) else 130
            self.run_dir.update_run(exitcode=self.exitcode, job_state=JobState.CANCELLED.value)
            print(f"fi-dist: ray job {self.run_id} stopped ({exc or 'Ctrl-C'})",
                  file=sys.stderr)
        finally:
            signal.signal(signal.SIGTERM, old_term)

    def _run(self, started: bool) -> None:
        self.run_dir.logs.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir.logs / "ray.log", "a")  # noqa: SIM115
        self.run_dir.write_run({"run_id": self.run_id, "pid": os.getpid(), "launcher": "ray",
                                "job_state": JobState.RUNNING.value,
                                "spec": self.spec.to_dict(), "cwd": os.getcwd()})
        try:
            while True:
                code = self._attempt()
                self.exitcode = code
                if code == 0 or self.attempts >= self.spec.max_restarts or code < 128:
                    break
                self.attempts += 1
                self._print(f"fi-dist: restarting the job (attempt {self.attempts} of "
                            f"{self.spec.max_restarts}) after exit {code}")
                self.run_dir.clear_attempt_state()
        finally:
            self._log.close()
            self._log = None
            if started:
                ray.shutdown()
        state = JobState.SUCCEEDED if self.exitcode == 0 else JobState.FAILED
        self.run_dir.update_run(exitcode=self.exitcode, job_state=state.value)
        self._print(f"fi-dist: ray job {self.run_id} {state.value} (exit {self.exitcode})")

    def _attempt(self) -> int:
        pg = placement_group(self.req.bundles, strategy="SPREAD")
        if not pg.wait(timeout_seconds=120):
            _bounded(remove_placement_group, pg)
            raise LauncherError(f"Ray could not place {len(self.req.bundles)} bundles "
                                f"{self.req.bundles[1:2] or self.req.bundles}: "
                                f"cluster resources are {ray.cluster_resources()}")
        actor_cls = ray.remote(RankActor)
        slot = {"num_gpus": 1} if self.spec.resources.gpus else {"num_cpus": 1}
        actors = [actor_cls.options(
            max_concurrency=4, max_restarts=0, **slot,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=r.node)).remote()
            for r in self.req.ranks]
        try:
            return self._drive(actors)
        finally:
            if self.spec.debug.enabled:
                with contextlib.suppress(RayActorError, ray.exceptions.GetTimeoutError):
                    ray.get(actors[0].stop_hub.remote(), timeout=30)
            for a in actors:
                ray.kill(a)
            # Whatever of this run is left on this machine (a hub whose actor was lost).
            procs.terminate(self.run_id, grace=3.0)
            _bounded(remove_placement_group, pg)

    def _drive(self, actors: list[Any]) -> int:
        where = ray.get([a.where.remote() for a in actors])
        master = (where[0][1], ray.get(actors[0].free_port.remote()))
        self.run_dir.update_run(attempt=self.attempts, master=f"{master[0]}:{master[1]}",
                                placement={str(r.rank): {"node_id": w[0], "ip": w[1]}
                                           for r, w in zip(self.req.ranks, where, strict=True)})
        argv = ["-m", "fi_dist.runtime.rank_main", self.spec.script, *self.spec.script_args]
        job_env = {ev.FI_DIST_RUN_ID: self.run_id, ev.FI_DIST_RUN_DIR: str(self.run_dir.path)}
        if self.spec.debug.enabled:
            from fi_dist.runtime.debug.config import debug_env

            # The hub's rank port on rank 0's node; its IDE port is the spec's (0: free,
            # published in launch.json by the hub).
            job_env.update(debug_env(self.spec.debug, ray.get(actors[0].free_port.remote()),
                                     token=self._token))
        envs = []
        for r, (_, ip) in zip(self.req.ranks, where, strict=True):
            env = rank_env(self.req, r, master, ip, self.attempts)
            env.update(job_env)
            envs.append(env)
        if self.spec.debug.enabled:
            ray.get(actors[0].start_hub.remote(envs[0], os.getcwd()))
        for a, env in zip(actors, envs, strict=True):
            ray.get(a.start.remote(argv, env, os.getcwd()))
        exits: dict[int, int | None] = {r.rank: None for r in self.req.ranks}
        first_failure: int | None = None
        while any(c is None for c in exits.values()):
            for r, a in zip(self.req.ranks, actors, strict=True):
                if exits[r.rank] is not None:
                    continue
                try:
                    lines, code = ray.get(a.poll.remote(), timeout=60)
                except (RayActorError, ray.exceptions.GetTimeoutError) as exc:
                    self._print(f"fi-dist: rank {r.rank} (node {r.node}) lost its Ray actor "
                                f"({type(exc).__name__}): treating it as preempted")
                    lines, code = [], PREEMPTED_EXIT
                for line in lines:
                    self._print(f"[node{r.node} rank{r.rank}] {line}")
                if code is not None:
                    exits[r.rank] = code
                    if code != 0 and first_failure is None:
                        # The first failure is the root cause; the peers' exits after
                        # the stop below (143) are its consequences.
                        first_failure = code
                        self._print(f"fi-dist: rank {r.rank} (node {r.node}) exited {code}; "
                                    "stopping the other ranks")
                        self._stop(actors, exits)
            time.sleep(0.1)
        return first_failure or 0

    def _stop(self, actors: list[Any], exits: dict[int, int | None]) -> None:
        grace = self.spec.grace_period
        for r, a in zip(self.req.ranks, actors, strict=True):
            if exits[r.rank] is None:
                a.terminate.remote(grace)
