"""Local launcher: N "nodes" as separate process trees on this machine, like N pods.

Node ``i`` is a node agent (:mod:`fi_dist.runtime.node_agent`) in its own session,
started with exactly the env the Kubeflow training operator gives a PyTorchJob pod
(MASTER_*, WORLD_SIZE = node count, RANK = node index, PET_*), plus its own loopback
address ``127.0.0.(i+2)`` as "pod IP". The agent starts the node's ranks with
torchrun's semantics. This launcher supervises: it streams prefixed output, ends the
job when a node fails, restarts it like ``restartPolicy: ExitCode`` when asked, and
sweeps every process carrying the run id so nothing outlives ``fi-dist run``.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.console import PlainView
from fi_dist.errors import ConfigError
from fi_dist.launcher import DryRun, JobState, JobStatus, Launcher
from fi_dist.runtime.idle.config import idle_env
from fi_dist.spec import JobSpec
from fi_dist.summary import Summary, format_summary, summarize

MAX_LOCAL_NODES = 253
PREEMPTED_EXIT = 143
PEER_EXIT_WINDOW = 3.0


def node_addr(node: int) -> str:
    """Node ``node``'s own loopback address ("pod IP")."""
    return f"127.0.0.{node + 2}"


@dataclass
class NodePlan:
    node: int
    addr: str
    argv: list[str]
    env: dict[str, str]


@dataclass
class LocalRequest:
    spec: JobSpec
    master_addr: str
    master_port: int
    nodes: list[NodePlan]


def _port_free(port: int) -> bool:
    # Binding the wildcard address fails if anything listens on this port on any
    # loopback address, which is what the rendezvous store will need.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def operator_env(spec: JobSpec, node: int, master_addr: str, master_port: int) -> dict[str, str]:
    """The variables the Kubeflow training operator (v1.9) injects into node ``node``'s pod.

    Since kubeflow/trainer#1840 (v1.8) WORLD_SIZE is pods x nprocPerNode, and the
    operator sets PYTHONUNBUFFERED=0. A test checks
    this against fi_dist.k8s.operator's reading of a generated PyTorchJob. CPython reads
    PYTHONUNBUFFERED=0 as "buffered", so the node agent line-buffers its own output.
    """
    return {
        ev.MASTER_ADDR: master_addr,
        ev.MASTER_PORT: str(master_port),
        ev.WORLD_SIZE: str(spec.nnodes * spec.nproc_per_node),
        ev.RANK: str(node),
        ev.PET_NNODES: str(spec.nnodes),
        ev.PET_NPROC_PER_NODE: str(spec.nproc_per_node),
        ev.PET_NODE_RANK: str(node),
        ev.PET_MASTER_ADDR: master_addr,
        ev.PET_MASTER_PORT: str(master_port),
        ev.PYTHONUNBUFFERED: "0",
    }


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, view: PlainView | None = None, cwd: Path | None = None) -> None:
        self.view = view or PlainView()
        self.cwd = cwd or Path.cwd()

    # --- dry run ---------------------------------------------------------------
    def dryrun(self, spec: JobSpec) -> DryRun:
        if spec.nnodes > MAX_LOCAL_NODES:
            raise ConfigError(f"nnodes={spec.nnodes}: the local launcher runs at most "
                              f"{MAX_LOCAL_NODES} nodes (one loopback address each)")
        if not Path(spec.script).is_file():
            raise ConfigError(f"training script not found: {spec.script}")
        master_addr = node_addr(0)
        port = spec.master_port or free_port()
        if not _port_free(port):
            raise ConfigError(f"master port {port} is already in use; pick another with "
                              "--master-port (or 0 for a free one)")
        debug_vars = self._debug_env(spec)
        nodes = []
        for i in range(spec.nnodes):
            env = {**spec.env, **operator_env(spec, i, master_addr, port), **debug_vars}
            env.update({ev.FI_DIST_LAUNCHER: "local", ev.FI_DIST_NODE_ADDR: node_addr(i),
                        ev.FI_DIST_NODE_RANK: str(i),
                        ev.FI_DIST_GRACE_PERIOD: str(spec.grace_period)})
            if spec.checkpoint_uri:
                env[ev.FI_DIST_CKPT_DIR] = spec.checkpoint_uri
            env.update(idle_env(spec.idle))  # FI_DIST_IDLE_*: the node agent's culler
            argv = [sys.executable, "-m", "fi_dist.runtime.node_agent", spec.script,
                    *spec.script_args]
            nodes.append(NodePlan(i, node_addr(i), argv, env))
        request = LocalRequest(spec, master_addr, port, nodes)
        docs = [{"node": n.node, "addr": n.addr, "argv": n.argv, "env": n.env} for n in nodes]
        return DryRun(self.name, spec, request, docs)

    @staticmethod
    def _debug_env(spec: JobSpec) -> dict[str, str]:
        # FI_DIST_DEBUG*: the hub on node 0 and debugpy in every rank (docs/debug.md).
        if not spec.debug.enabled:
            return {}
        from fi_dist.runtime.debug.config import debug_env

        if spec.debug.port and not _port_free(spec.debug.port):
            raise ConfigError(f"debug port {spec.debug.port} is already in use; pick another "
                              "with --debug-port (or 0 for a free one)")
        return debug_env(spec.debug, rank_port=free_port())

    # --- run ---------------------------------------------------------------------
    def schedule(self, dryrun: DryRun) -> str:
        run = self.run(dryrun)
        return run.run_id

    def run(self, dryrun: DryRun) -> _Supervisor:
        sup = _Supervisor(dryrun.request, self.view, rundir.create_run(self.cwd))
        sup.run()
        return sup

    def status(self, job_id: str) -> JobStatus:
        run = rundir.RunDir(rundir.root(self.cwd) / "runs" / job_id)
        info = run.read_run()
        if not info:
            return JobStatus(job_id, JobState.UNKNOWN, "no such run")
        state = JobState(info.get("job_state", "running"))
        if state is JobState.RUNNING and not rundir.pid_alive(info.get("pid", -1)):
            state = JobState.UNKNOWN
        return JobStatus(job_id, state, exitcode=info.get("exitcode"), ranks=run.ranks())

    def cancel(self, job_id: str) -> None:
        procs.terminate(job_id, grace=5.0)


class _Supervisor:
    """Runs one job attempt after another until success, a final failure or a stop."""

    def __init__(self, request: LocalRequest, view: PlainView, run: rundir.RunDir) -> None:
        self.req = request
        self.spec = request.spec
        self.view = view
        self.run_dir = run
        self.run_id = run.run_id
        self.summary: Summary | None = None
        self.exitcode = 1
        self.attempts = 0
        self._stop_signal: int | None = None
        self._lines: queue.Queue[tuple[int, str | None]] = queue.Queue()

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    def run(self) -> None:
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        self.run_dir.write_run({
            "run_id": self.run_id, "pid": os.getpid(), "state": "running",
            "job_state": JobState.RUNNING.value, "spec": self.spec.to_dict(),
            "master": f"{self.req.master_addr}:{self.req.master_port}",
            "nodes": {n.node: {"addr": n.addr} for n in self.req.nodes},
            "cwd": str(Path.cwd()),
        })
        self.view.start(self.spec.nnodes, self.spec.nproc_per_node)
        try:
            while True:
                self.summary = self._attempt()
                if self.summary.ok or self._stop_signal is not None:
                    break
                if self.attempts >= self.spec.max_restarts or not _retryable(self.summary):
                    break
                self.attempts += 1
                self.view.message(f"fi-dist: restarting the job (attempt {self.attempts} of "
                                  f"{self.spec.max_restarts}) after exit {self.summary.exitcode}")
                self.run_dir.clear_attempt_state()
        finally:
            left = procs.job_processes(self.run_id)
            procs.signal_pids(left, signal.SIGKILL)
            self.view.stop()
            for s, h in old.items():
                signal.signal(s, h)
        self.exitcode = self.summary.exitcode
        if self._stop_signal is not None and self.exitcode == 0:
            self.exitcode = 128 + self._stop_signal
        self.view.message(format_summary(self.summary))
        self.run_dir.update_run(state="finished", exitcode=self.exitcode, job_state=(
            JobState.SUCCEEDED if self.exitcode == 0 else JobState.FAILED).value)

    def _start_nodes(self) -> dict[int, subprocess.Popen[bytes]]:
        popens = {}
        for plan in self.req.nodes:
            env = {**os.environ, **plan.env, ev.FI_DIST_RUN_ID: self.run_id,
                   ev.FI_DIST_RUN_DIR: str(self.run_dir.path),
                   ev.FI_DIST_ATTEMPT: str(self.attempts)}
            p = subprocess.Popen(plan.argv, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            threading.Thread(target=self._pump, args=(plan.node, p), daemon=True).start()
            popens[plan.node] = p
            self.view.node_state(plan.node, "running")
        self.run_dir.update_run(nodes={n: {"addr": self.req.nodes[n].addr, "pid": p.pid}
                                       for n, p in popens.items()}, attempt=self.attempts)
        return popens

    def _pump(self, node: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self._lines.put((node, raw.decode(errors="replace").rstrip("\n")))
        self._lines.put((node, None))

    def _drain(self, timeout: float) -> None:
        try:
            node, text = self._lines.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if text is not None:
                self.view.line(node, text)
            try:
                node, text = self._lines.get_nowait()
            except queue.Empty:
                return

    def _attempt(self) -> Summary:
        popens = self._start_nodes()
        exits: dict[int, int | None] = {n: None for n in popens}
        torn_down = False
        first_failure: float | None = None
        while any(c is None for c in exits.values()):
            self._drain(0.05)
            for n, p in popens.items():
                if exits[n] is None and (code := p.poll()) is not None:
                    exits[n] = code
                    self.view.node_state(n, f"exited {code}")
            failed = any(c not in (None, 0) for c in exits.values())
            if failed and first_failure is None:
                first_failure = time.monotonic()
            # Peers of a failed node usually fail on their own within a moment (closed
            # sockets); give them that so their exit codes are their own, then end them.
            overdue = first_failure is not None and time.monotonic() - first_failure > PEER_EXIT_WINDOW
            if (overdue or self._stop_signal is not None) and not torn_down:
                torn_down = True
                threading.Thread(target=procs.terminate, daemon=True,
                                 args=(self.run_id, None, self.spec.grace_period)).start()
        for p in popens.values():
            p.wait()
        time.sleep(0.05)
        self._drain(0.05)
        return summarize(self.run_dir, self.spec.world_size, self.spec.nproc_per_node, exits)


def _retryable(summary: Summary) -> bool:
    # restartPolicy: ExitCode retries 128-255 (signals, preemption), not 1-127 (bugs).
    return summary.exitcode >= 128


def create_launcher() -> LocalLauncher:
    return LocalLauncher()
