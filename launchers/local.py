"""Local launcher: N "nodes" as separate process trees on this machine, like N pods.

Node ``i`` is a node agent (``python -m fi_dist.runtime.node_agent``) in its own
session, started with exactly the env the Kubeflow training operator gives a PyTorchJob
pod (:func:`fi_dist.k8s.operator.pod_env`: MASTER_*, WORLD_SIZE, RANK = node index,
PET_*), its own loopback address ``127.0.0.(i+2)`` as "pod IP", and the job's contract
(:mod:`fi_dist.contract`). The agent starts the node's ranks with torchrun's
semantics. The supervisor (:mod:`fi_dist.supervisor`) streams prefixed output, ends
the job when a node fails and restarts it like ``restartPolicy: ExitCode``; every
process carrying the run id is swept at the end so nothing outlives ``fi-dist run``.

``--network netns`` puts every node in a network namespace of its own
(:mod:`fi_dist.launchers.netns`): pod IP ``10.244.0.(i+2)`` on its own ``eth0``, the pod's
hostname, ``MASTER_ADDR`` = ``<job>-master-0`` as the operator sets it. Node agents send
heartbeats (a node silent for ``--node-timeout`` is lost) and hold a lifeline to this
process (they stop their ranks when it is gone, even after ``kill -9``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.console import PlainView
from fi_dist.contract import JobContract, LauncherKind, node_agent_command, program_command
from fi_dist.errors import ConfigError, LauncherError
from fi_dist.hang.report import Report
from fi_dist.k8s.operator import pod_env, pod_name
from fi_dist.launcher import (
    Attachment,
    DryRun,
    Fault,
    JobStatus,
    Launcher,
    run_attachment,
    run_stacks,
    run_status,
)
from fi_dist.launchers import chaos, netns
from fi_dist.launchers.netem import Shaper
from fi_dist.launchers.node_liveness import HeartbeatReceiver, Liveness, NodeState
from fi_dist.launchers.port_forward import PortForward
from fi_dist.spec import JobSpec
from fi_dist.summary import Summary, summarize, summarize_ranks
from fi_dist.supervisor import Backend, Supervisor

log = logging.getLogger("fi_dist.launchers.local")

MAX_LOCAL_NODES = 253
NETNS_MASTER_PORT = 29500
"""``--master-port 0`` in netns mode: every port of a fresh namespace is free."""
ORPHAN_GRACE_CAP = 60.0
"""Longest wait for a dead run's leftovers to end on their own before SIGKILL."""


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
    hostname: str = ""
    """The pod's name, its hostname in netns mode."""


@dataclass
class LocalRequest:
    spec: JobSpec
    job: JobContract
    master_addr: str
    master_port: int
    nodes: list[NodePlan]

    @property
    def netns(self) -> bool:
        return self.spec.network == "netns"


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


def check_target(spec: JobSpec) -> None:
    """The script file, or the program on PATH, exists here (a module is found at run time).

    Raises:
        ConfigError: naming what is missing.
    """
    if spec.module:
        return
    if spec.no_python:
        path = spec.script
        if not (shutil.which(path) or (os.sep in path and os.access(path, os.X_OK)
                                       and Path(path).is_file())):
            raise ConfigError(f"program not found: {spec.script} (--no-python runs a program "
                              "on PATH or an executable file)")
        return
    if not Path(spec.script).is_file():
        raise ConfigError(f"training script not found: {spec.script}")


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
        check_target(spec)
        in_netns = spec.network == "netns"
        addr = netns.node_addr if in_netns else node_addr
        if in_netns:  # as the operator sets it: the Master pod's name
            master_addr, port = pod_name(spec.name, 0), spec.master_port or NETNS_MASTER_PORT
        else:
            master_addr, port = node_addr(0), spec.master_port or free_port()
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
        if in_netns and job.debug is not None and not job.debug.ide_port:
            # The host forwards the hub's port number (the hub names its own port in the
            # child sessions it opens), so pick one that is free here.
            job = job.replace(debug=dataclasses.replace(job.debug, ide_port=free_port()))
        if in_netns and job.debug is not None and job.debug.code_server:
            # code-server listens in node 0's namespace; the host forwards the same port
            # number (the URL it prints), so it must be known and free here.
            ide = job.debug.code_server_port or free_port()
            if not _port_free(ide):
                raise ConfigError(f"code-server port {ide} is already in use; pick another "
                                  "with --code-server-port (or 0 for a free one)")
            job = job.replace(debug=dataclasses.replace(job.debug, code_server_port=ide))
        nodes = []
        for i in range(spec.nnodes):
            env = pod_env(master_addr, port, spec.nnodes, spec.nproc_per_node, i)
            env.update({ev.FI_DIST_NODE_ADDR: addr(i), ev.FI_DIST_NODE_RANK: str(i)})
            if spec.pod_entrypoint:
                argv = program_command(spec.script, spec.script_args, module=spec.module,
                                       no_python=spec.no_python)
                if not in_netns:
                    # gloo cannot tell the 127.0.0.x "pod IPs" apart: as for every local
                    # rank (rank_main sets it there), its data sockets use lo.
                    env.setdefault(ev.GLOO_SOCKET_IFNAME,
                                   spec.env.get(ev.GLOO_SOCKET_IFNAME, "lo"))
            else:
                argv = node_agent_command(spec.script, spec.script_args, module=spec.module,
                                          no_python=spec.no_python)
            nodes.append(NodePlan(i, addr(i), argv, env, pod_name(spec.name, i)))
        request = LocalRequest(spec, job, master_addr, port, nodes)
        shown = job.shown_env()
        docs = [{"node": n.node, "addr": n.addr, "network": spec.network,
                 **({"hostname": n.hostname} if in_netns else {}), "argv": n.argv,
                 "env": {**shown, **n.env}} for n in nodes]
        return DryRun(self.name, spec, request, docs)

    # --- run ---------------------------------------------------------------------
    def schedule(self, dryrun: DryRun) -> str:
        raise ConfigError("the local launcher runs jobs in the foreground (fi-dist run)")

    def run(self, dryrun: DryRun, view: PlainView) -> int:
        req: LocalRequest = dryrun.request
        if req.netns:
            netns.check_support()  # before anything exists: a clear error, nothing to undo
        run_dir = rundir.create_run(self.cwd)
        backend = LocalBackend(req, run_dir)
        info = {"master": f"{req.master_addr}:{req.master_port}", "network": req.spec.network,
                "nodes": {n.node: {"addr": n.addr} for n in req.nodes}}
        return Supervisor(req.spec, backend, view, run_dir, info).run()

    def status(self, job_id: str) -> JobStatus:
        return run_status(rundir.root(self.cwd) / "runs" / job_id)

    def attach(self, job_id: str, local_port: int | None = None) -> Attachment:
        return run_attachment(rundir.root(self.cwd) / "runs" / job_id)

    def cancel(self, job_id: str) -> None:
        procs.terminate(job_id, grace=5.0)

    def chaos(self, job_id: str, node: int, fault: Fault) -> str:
        run = rundir.RunDir(rundir.root(self.cwd) / "runs" / job_id)
        info = run.read_run()
        if not info:
            raise LauncherError(f"no run {job_id} under {rundir.root(self.cwd)}")
        if info.get("network") != "netns":
            raise LauncherError(f"run {job_id} runs on loopback: network faults need its "
                                "nodes in namespaces of their own (fi-dist run --network netns)")
        if info.get("state") == "finished" or not rundir.pid_alive(info.get("pid", -1)):
            raise LauncherError(f"run {job_id} is not running")
        return chaos.request(job_id, node, fault)
    def stacks(self, job_id: str, all_threads: bool = False) -> Report:
        return run_stacks(rundir.root(self.cwd) / "runs" / job_id, all_threads)


class LocalBackend(Backend):
    """Units are node agents, each a process tree in its own session (and namespace)."""

    def __init__(self, request: LocalRequest, run_dir: rundir.RunDir) -> None:
        self.req = request
        self.run_dir = run_dir
        self.job = request.job.replace(run_id=run_dir.run_id, run_dir=str(run_dir.path))
        self.popens: dict[int, subprocess.Popen[bytes]] = {}
        self.seen: dict[int, float] = {}
        """When each node was seen ending (orders failures a node agent did not time)."""
        self._lines: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self.network: netns.Network | None = None
        self.shaper: Shaper | None = None
        self.faults: dict[int, chaos.NodeFaults] = {}
        # Heartbeats come from node agents; a pod that runs its target itself has none.
        self.liveness = Liveness(0.0 if request.spec.pod_entrypoint
                                 else request.spec.node_timeout)
        self._attempt = 0
        self._lock = threading.Lock()  # liveness, faults and network.json across threads
        self._lost: dict[int, str] = {}
        self._lifeline: tuple[int, int] | None = None
        self._receiver: HeartbeatReceiver | None = None
        self._forwards: list[PortForward] = []
        self._control: chaos.ControlServer | None = None

    # --- the run's network, heartbeats, lifeline ------------------------------------------
    def open(self) -> None:
        _sweep_orphans()
        self._lifeline = os.pipe()  # only the node agents inherit the read end
        if self.req.netns:
            self.network = netns.Network([n.hostname for n in self.req.nodes],
                                         self.run_dir.path / "network")
            self.shaper = Shaper(self.network)
            beats = self.network.socket_in(None, socket.AF_INET, socket.SOCK_DGRAM)
            beats.bind((netns.CONTROL_ADDR, 0))
            self._control = chaos.ControlServer(self.run_dir.run_id, self._chaos)
            debug = self.job.debug
            if debug is not None:  # the hub's port (and code-server's) like kubectl port-forward
                ports = [debug.ide_port, *([debug.code_server_port] if debug.code_server else [])]
                self._forwards = [self._forward_to_node0(p) for p in ports]
        else:
            beats = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            beats.bind(("127.0.0.1", 0))
        self._receiver = HeartbeatReceiver(beats, self.run_dir.run_id, self._beat)
        self.job = self.job.replace(heartbeat=self._receiver.address,
                                    lifeline_fd=self._lifeline[0],
                                    owner=procs.identity(os.getpid()))
        self._write_network()

    def _forward_to_node0(self, port: int) -> PortForward:
        network = self.network
        assert network is not None
        return PortForward(port, lambda: network.connect_in(0, ("127.0.0.1", port)))

    def _beat(self, node: int, attempt: int) -> None:
        with self._lock:
            if attempt == self._attempt:
                self.liveness.beat(node, time.monotonic())

    def _write_network(self) -> None:
        with self._lock:
            doc: dict[str, Any] = (self.network.describe() if self.network is not None
                                   else {"mode": "loopback", "nodes": {
                                       n.node: {"addr": n.addr} for n in self.req.nodes}})
            now_mono, now = time.monotonic(), time.time()
            for k, row in doc["nodes"].items():
                state = self.liveness.state.get(k, NodeState.REACHABLE)
                row["state"] = state.value
                if state is not NodeState.REACHABLE:
                    row["silent_since"] = now - (now_mono - self.liveness.last.get(k, now_mono))
                row["faults"] = self.faults.get(k, chaos.NodeFaults()).describe()
            doc["node_timeout"] = self.req.spec.node_timeout
            rundir.write_json(self.run_dir.network_file, doc)

    def _chaos(self, node: int, fault: Fault) -> str:
        """Apply ``fault`` to node ``node`` (the control server's thread)."""
        if self.network is None or self.shaper is None:
            raise LauncherError("this run's nodes share one loopback: no network to break")
        if not 0 <= node < self.network.nnodes:
            raise LauncherError(f"--node {node} is outside 0..{self.network.nnodes - 1}")
        old = self.faults.get(node, chaos.NodeFaults())
        new = old.apply(fault)
        done = []
        if new.partitioned != old.partitioned:
            self.network.set_link(node, up=not new.partitioned)
            done.append(f"switch port p{node} {'down' if new.partitioned else 'up'}")
        if new.shape != old.shape:
            done.append(f"{self.shaper.set(node, new.shape)} shaping of eth0")
        with self._lock:
            self.faults[node] = new
            attempt = self._attempt
        how = "; ".join(done) or "nothing to change"
        self.run_dir.record_fault({"time": time.time(), "node": node, "attempt": attempt,
                                   "fault": fault.describe(), "now": new.describe(),
                                   "mechanism": how})
        self._write_network()
        return f"node {node}: {fault.describe()} -> {new.describe()} ({how})"

    # --- the Backend interface -------------------------------------------------------------
    def start(self, attempt: int) -> list[int]:
        job_env = self.job.replace(attempt=attempt).to_env()
        assert self._lifeline is not None, "open() first"
        self.popens = {}
        self.seen = {}
        with self._lock:
            self._attempt = attempt
            self._lost = {}
            self.liveness.start([n.node for n in self.req.nodes], time.monotonic())
        for plan in self.req.nodes:
            env = {**os.environ, **job_env, **plan.env}
            argv = (self.network.enter_argv(plan.node, plan.argv) if self.network is not None
                    else plan.argv)
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True, pass_fds=(self._lifeline[0],))
            threading.Thread(target=self._pump, args=(plan.node, p), daemon=True).start()
            self.popens[plan.node] = p
        self.run_dir.update_run(nodes={n: {"addr": self.req.nodes[n].addr, "pid": p.pid}
                                       for n, p in self.popens.items()})
        self._write_network()
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
        for node in ended:
            self.seen.setdefault(node, time.time())
        if ended:
            with self._lock:
                for n in ended:
                    self.liveness.forget(n)
        lines += self._check_liveness()
        return lines, ended

    def _check_liveness(self) -> list[tuple[int, str]]:
        with self._lock:
            changes = self.liveness.check(time.monotonic())
        if not changes:
            return []
        out = []
        timeout = self.req.spec.node_timeout
        for c in changes:
            if c.state is NodeState.LOST:
                self.run_dir.record_node_lost(c.node, time.time() - c.silent_for, c.silent_for)
                self._lost[c.node] = (f"node {c.node} lost: no heartbeat from its agent for "
                                      f"{c.silent_for:.1f}s (--node-timeout {timeout:g}); "
                                      "treating it as failed")
            elif c.state is NodeState.UNREACHABLE:
                left = f"; lost after {timeout:g}s" if timeout else ""
                out.append((c.node, f"fi-dist: node {c.node} unreachable: no heartbeat for "
                                    f"{c.silent_for:.1f}s{left}"))
            else:
                out.append((c.node, f"fi-dist: node {c.node} reachable again"))
        self._write_network()
        return out

    def lost_units(self) -> dict[int, str]:
        lost, self._lost = self._lost, {}
        return lost

    def terminate(self, grace: float) -> None:
        procs.terminate(self.job.run_id, None, grace)

    def summarize(self, exits: dict[int, int | None]) -> Summary:
        spec = self.req.spec
        if spec.pod_entrypoint and spec.nproc_per_node == 1:
            # Each pod is its rank: its own exit code, no node agent's report.
            return summarize_ranks(self.run_dir, 1, exits, self.seen)
        return summarize(self.run_dir, spec.world_size, spec.nproc_per_node, exits)

    def close(self) -> None:
        procs.signal_pids(procs.job_processes(self.job.run_id), signal.SIGKILL)
        for part in (self._control, *self._forwards, self._receiver, self.shaper, self.network):
            if part is not None:
                part.close()
        if self._lifeline is not None:
            for fd in self._lifeline:
                os.close(fd)
            self._lifeline = None


def _sweep_orphans() -> None:
    """End what dead runs left behind (their launcher gone, ``kill -9``, OOM).

    Their node agents stop them on their own within the grace period (the lifeline);
    this is the net under that: whatever is still there after its grace is SIGKILLed,
    in a background thread. Their namespaces, veths and qdiscs go with the last of them.
    """
    pids = procs.orphans()
    if not pids:
        return
    log.warning("fi-dist: %d processes of dead runs are still there; SIGKILL for those "
                "left after their grace period", len(pids))

    def reap() -> None:
        deadline = time.monotonic() + ORPHAN_GRACE_CAP
        while time.monotonic() < deadline and set(pids) & set(procs.orphans()):
            time.sleep(0.5)
        procs.signal_pids(sorted(set(pids) & set(procs.orphans())), signal.SIGKILL)

    threading.Thread(target=reap, name="fi-dist-sweep", daemon=True).start()


def create_launcher() -> LocalLauncher:
    return LocalLauncher()
