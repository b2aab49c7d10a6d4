"""Local launcher: N "nodes" as separate process trees on this machine, like N pods.

Node ``i`` is a node agent (``python -m fi_dist.runtime.node_agent``) in its own
session, started with exactly the env the Kubeflow training operator gives a PyTorchJob
pod (:func:`fi_dist.k8s.operator.pod_env`: MASTER_*, WORLD_SIZE, RANK = node index,
PET_*), its own loopback address ``127.0.0.(i+2)`` as "pod IP", and the job's contract
(:mod:`fi_dist.contract`). The agent starts the node's ranks with torchrun's
semantics. The supervisor (:mod:`fi_dist.supervisor`) streams prefixed output, ends
the job when a node fails and restarts it like ``restartPolicy: ExitCode``; every
process carrying the run id is swept at the end so nothing outlives ``fi-dist run``.
"""

from __future__ import annotations

import errno
import os
import queue
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.console import PlainView
from fi_dist.contract import JobContract, LauncherKind, node_agent_command
from fi_dist.errors import ConfigError
from fi_dist.hang.report import Report
from fi_dist.k8s.operator import pod_env
from fi_dist.launcher import (
    Attachment,
    DryRun,
    JobStatus,
    Launcher,
    run_attachment,
    run_stacks,
    run_status,
)
from fi_dist.spec import JobSpec
from fi_dist.summary import Summary, summarize
from fi_dist.supervisor import Backend, Supervisor

MAX_LOCAL_NODES = 253


def node_addr(node: int) -> str:
    """Node ``node``'s own loopback address ("pod IP")."""
    return f"127.0.0.{node + 2}"


@dataclass
class NodePlan:
    node: int
    addr: str
    argv: list[str]
    env: dict[str, str]
    """The node's placement env: the operator's pod env and the node address."""


@dataclass
class LocalRequest:
    spec: JobSpec
    job: JobContract
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


class LocalLauncher(Launcher):
    name = "local"

    def __init__(self, cwd: Path | None = None) -> None:
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
        rank_port = None
        if spec.debug.enabled:
            if spec.debug.port and not _port_free(spec.debug.port):
                raise ConfigError(f"debug port {spec.debug.port} is already in use; pick "
                                  "another with --debug-port (or 0 for a free one)")
            rank_port = free_port()
        job = JobContract.from_spec(spec, LauncherKind.LOCAL, rank_port=rank_port)
        nodes = []
        for i in range(spec.nnodes):
            env = pod_env(master_addr, port, spec.nnodes, spec.nproc_per_node, i)
            env.update({ev.FI_DIST_NODE_ADDR: node_addr(i), ev.FI_DIST_NODE_RANK: str(i)})
            argv = node_agent_command(spec.script, spec.script_args)
            nodes.append(NodePlan(i, node_addr(i), argv, env))
        request = LocalRequest(spec, job, master_addr, port, nodes)
        shown = job.shown_env()
        docs = [{"node": n.node, "addr": n.addr, "argv": n.argv, "env": {**shown, **n.env}}
                for n in nodes]
        return DryRun(self.name, spec, request, docs)

    # --- run ---------------------------------------------------------------------
    def schedule(self, dryrun: DryRun) -> str:
        raise ConfigError("the local launcher runs jobs in the foreground (fi-dist run)")

    def run(self, dryrun: DryRun, view: PlainView) -> int:
        run_dir = rundir.create_run(self.cwd)
        req: LocalRequest = dryrun.request
        backend = LocalBackend(req, run_dir)
        info = {"master": f"{req.master_addr}:{req.master_port}",
                "nodes": {n.node: {"addr": n.addr} for n in req.nodes}}
        return Supervisor(req.spec, backend, view, run_dir, info).run()

    def status(self, job_id: str) -> JobStatus:
        return run_status(rundir.root(self.cwd) / "runs" / job_id)

    def attach(self, job_id: str, local_port: int | None = None) -> Attachment:
        return run_attachment(rundir.root(self.cwd) / "runs" / job_id)

    def cancel(self, job_id: str) -> None:
        procs.terminate(job_id, grace=5.0)

    def stacks(self, job_id: str, all_threads: bool = False) -> Report:
        return run_stacks(rundir.root(self.cwd) / "runs" / job_id, all_threads)


class LocalBackend(Backend):
    """Units are node agents, each a process tree in its own session."""

    def __init__(self, request: LocalRequest, run_dir: rundir.RunDir) -> None:
        self.req = request
        self.run_dir = run_dir
        self.job = request.job.replace(run_id=run_dir.run_id, run_dir=str(run_dir.path))
        self.popens: dict[int, subprocess.Popen[bytes]] = {}
        self._lines: queue.Queue[tuple[int, str | None]] = queue.Queue()

    def start(self, attempt: int) -> list[int]:
        job_env = self.job.replace(attempt=attempt).to_env()
        self.popens = {}
        for plan in self.req.nodes:
            env = {**os.environ, **job_env, **plan.env}
            p = subprocess.Popen(plan.argv, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            threading.Thread(target=self._pump, args=(plan.node, p), daemon=True).start()
            self.popens[plan.node] = p
        self.run_dir.update_run(nodes={n: {"addr": self.req.nodes[n].addr, "pid": p.pid}
                                       for n, p in self.popens.items()})
        return list(self.popens)

    def _pump(self, node: int, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self._lines.put((node, raw.decode(errors="replace").rstrip("\n")))

    def poll(self, timeout: float) -> tuple[list[tuple[int, str]], dict[int, int]]:
        lines: list[tuple[int, str]] = []
        try:
            node, text = self._lines.get(timeout=timeout)
            while True:
                if text is not None:
                    lines.append((node, text))
                node, text = self._lines.get_nowait()
        except queue.Empty:
            pass
        ended = {n: code for n, p in self.popens.items() if (code := p.poll()) is not None}
        return lines, ended

    def terminate(self, grace: float) -> None:
        procs.terminate(self.job.run_id, None, grace)

    def summarize(self, exits: dict[int, int | None]) -> Summary:
        spec = self.req.spec
        return summarize(self.run_dir, spec.world_size, spec.nproc_per_node, exits)

    def close(self) -> None:
        procs.signal_pids(procs.job_processes(self.job.run_id), signal.SIGKILL)


def create_launcher() -> LocalLauncher:
    return LocalLauncher()
