"""``fi-dist run --network netns``: real namespaces, real veths and bridge, real faults.

Each node of a 2x2 job runs in a network namespace of its own (checked through
``/proc/<pid>/ns/net``), resolves the pods' names, and trains over its own ``eth0``;
``fi-dist chaos`` partitions, heals and delays nodes while the job runs. The reference
checksum comes from the same job on loopback. Needs root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from fi_dist import env_vars as ev
from fi_dist import procs, rundir
from fi_dist.launchers.netns import in_netns
from tests.support.cli import EXAMPLES, fi_dist_cmd
from tests.support.dap_client import JobClient
from tests.support.debug_job import DebugJob, marker_line

pytestmark = pytest.mark.timeout(300)

T = TypeVar("T")
STEPS = 32
TRAIN = [str(EXAMPLES / "ddp_train.py"), "--", "--steps", str(STEPS), "--ckpt-every", "4"]
MASTER = "fi-dist-job-master-0"


def checksum(output: str) -> str:
    found = re.findall(r"^\[node0 rank0\] final checksum: ([0-9a-f]+)$", output, re.M)
    assert len(found) == 1, output[-3000:]
    return found[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same checkpointing job on loopback, never interrupted."""
    work = tmp_path_factory.mktemp("loopback")
    p = subprocess.run(fi_dist_cmd("run", "--nnodes", "2", "--nproc-per-node", "2",
                                   "--master-port", "0", "--plain", *TRAIN, "--ckpt-dir",
                                   str(work / "ckpt")),
                       cwd=work, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    return checksum(p.stdout)


class Job:
    """``fi-dist run --network netns`` in the background, its output collected."""

    def __init__(self, workdir: Path, *flags: str, step_sleep: float = 0.15) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        self.seen: list[float] = []  # when each line arrived (monotonic)
        argv = fi_dist_cmd("run", "--network", "netns", "--nnodes", "2", "--nproc-per-node",
                           "2", "--grace", "3", "--plain", *flags, *TRAIN, "--ckpt-dir",
                           str(workdir / "ckpt"), "--step-sleep", str(step_sleep))
        self.proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.seen.append(time.monotonic())
            self.lines.append(line)

    def when(self, text: str) -> float:
        """When the first line holding ``text`` arrived."""
        return next(t for t, line in zip(self.seen, self.lines, strict=False) if text in line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def run(self) -> rundir.RunDir:
        return rundir.current_run(self.workdir, require_alive=False)

    def wait_for(self, what: Callable[[], bool], timeout: float = 120, why: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"never happened: {why}\n{self.output[-4000:]}")
            time.sleep(0.1)

    def wait_running(self) -> rundir.RunDir:
        def up() -> bool:
            try:
                ranks = self.run().ranks()
            except Exception:
                return False
            return len(ranks) == 4 and all(r.get("state") == "running" for r in ranks.values())

        self.wait_for(up, why="4 ranks running")
        return self.run()

    def wait_checkpoint(self, step: int = 4) -> None:
        manifest = self.workdir / "ckpt" / f"step-{step:010d}" / "manifest.json"
        self.wait_for(manifest.exists, why=f"checkpoint of step {step}")

    def chaos(self, node: int, *fault: str) -> str:
        p = subprocess.run(fi_dist_cmd("chaos", "--node", str(node), *fault), cwd=self.workdir,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    def finish(self, timeout: float = 240) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            self.proc.kill()
        self._pump.join(10)
        return code


@pytest.fixture
def job(workdir: Path) -> Iterator[Callable[..., Job]]:
    jobs: list[Job] = []

    def start(*flags: str, step_sleep: float = 0.15) -> Job:
        jobs.append(Job(workdir, *flags, step_sleep=step_sleep))
        return jobs[-1]

    yield start
    for j in jobs:
        if j.proc.poll() is None:
            j.proc.terminate()
            j.finish(60)


# --- helpers that look into namespaces -------------------------------------------------------
def netns_of(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def in_netns_of(pid: int, fn: Callable[[], T]) -> T:
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        return in_netns(fd, fn)
    finally:
        os.close(fd)


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(x.decode().split("=", 1) for x in raw if b"=" in x)


def _hex_addr(text: str) -> str:
    """An address of /proc/net/tcp (little-endian hex IPv4, or an IPv4-mapped IPv6)."""
    raw = bytes.fromhex(text)
    if len(raw) == 16:
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw).removeprefix("::ffff:")
    return socket.inet_ntoa(raw[::-1])


def sockets(pid: int) -> list[tuple[str, int, str, int]]:
    """(local addr, port, state hex, inode) of every TCP socket in ``pid``'s namespace."""
    out = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            addr, port = f[1].split(":")
            out.append((_hex_addr(addr), int(port, 16), f[3], int(f[9])))
    return out


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


def namespaces_left(inodes: set[int]) -> set[str]:
    """Whatever still holds one of these namespaces: a process, a thread, a descriptor."""
    left = set()
    for pattern in ("/proc/[0-9]*/ns/net", "/proc/[0-9]*/task/*/ns/net", "/proc/[0-9]*/fd/*"):
        for path in Path("/").glob(pattern.lstrip("/")):
            try:
                link = os.readlink(path)
            except OSError:
                continue
            if link.startswith("net:[") and int(link[5:-1]) in inodes:
                left.add(str(path))
    return left


def tcp_connect_ms(pid: int, address: tuple[str, int]) -> float:
    def dial() -> float:
        t = time.perf_counter()
        with socket.create_connection(address, timeout=5):
            return (time.perf_counter() - t) * 1000

    return in_netns_of(pid, dial)


# --- the tests -------------------------------------------------------------------------------
def test_each_node_its_own_namespace_names_and_eth0_same_checksum_under_delay(job, reference):
    j = job()
    run = j.wait_running()
    ranks = run.ranks()
    agents = {int(n): v["pid"] for n, v in run.read_run()["nodes"].items()}
    net = run.network()
    # One namespace per node, shared by its agent and its ranks, none of them the host's.
    spaces = {n: netns_of(agents[n]) for n in (0, 1)}
    assert spaces[0] != spaces[1] and netns_of(os.getpid()) not in spaces.values()
    for r, info in ranks.items():
        node = r // 2
        assert netns_of(info["pid"]) == spaces[node]
        assert spaces[node] == f"net:[{net['nodes'][str(node)]['netns']}]"
        env = environ(info["pid"])
        assert env[ev.MASTER_ADDR] == env[ev.PET_MASTER_ADDR] == MASTER  # as the operator has it
        assert env[ev.FI_DIST_NODE_ADDR] == f"10.244.0.{node + 2}"
        assert ev.GLOO_SOCKET_IFNAME not in env  # gloo finds the node's interface itself
    # gloo's connections go out of each node's eth0 address, never loopback.
    j.wait_checkpoint()  # training: every rank's process group is up
    for r, info in ranks.items():
        mine = socket_inodes(info["pid"])
        established = [s for s in sockets(info["pid"]) if s[3] in mine and s[2] == "01"]
        assert established, f"rank {r} has no TCP connection"
        assert {s[0] for s in established} == {f"10.244.0.{r // 2 + 2}"}, established

    # 5 ms more on everything node 1 sends: a connection from node 1 to node 0 feels it.
    server = in_netns_of(agents[0], lambda: socket.create_server(("10.244.0.2", 0)))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: [server.accept()[0].close() for _ in range(8)],
                     daemon=True).start()
    before = min(tcp_connect_ms(agents[1], ("10.244.0.2", port)) for _ in range(5))
    out = j.chaos(1, "delay", "5")
    assert "node 1: delay 5 ms -> delay 5 ms" in out, out
    after = min(tcp_connect_ms(agents[1], ("10.244.0.2", port)) for _ in range(3))
    assert after >= 5.0 > before, (before, after)
    status = subprocess.run(fi_dist_cmd("status"), cwd=j.workdir, capture_output=True,
                            text=True, timeout=60).stdout
    assert status.count("[network: delay 5 ms]") == 2, status  # ranks 2 and 3

    assert j.finish() == 0, j.output[-3000:]
    assert checksum(j.output) == reference
    assert "node 1: delay 5 ms -> delay 5 ms" in j.output  # the summary lists it
    assert json.loads((run.path / "chaos.jsonl").read_text())["fault"] == "delay 5 ms"
    server.close()


def test_a_partitioned_node_is_lost_the_job_restarts_after_heal_and_resumes(job, reference):
    j = job("--max-restarts", "1", "--node-timeout", "10")
    j.wait_running()
    j.wait_checkpoint()
    j.chaos(1, "partition")
    j.wait_for(lambda: "fi-dist: node 1 unreachable" in j.output, 30, "node 1 unreachable")
    states = json.loads(subprocess.run(fi_dist_cmd("status", "--json"), cwd=j.workdir,
                                       capture_output=True, text=True, timeout=60).stdout)
    assert [r["state"].split(" (")[0] for r in states["ranks"][2:]] == ["unreachable"] * 2
    j.wait_for(lambda: "restarting the job (attempt 1 of 1) after exit 137" in j.output, 60,
               "the restart")
    j.chaos(1, "heal")
    assert j.finish() == 0, j.output[-4000:]
    out = j.output
    assert "fi-dist: node 1 lost: no heartbeat from its agent for 10" in out
    assert re.search(r"resumed from checkpoint step (\d+)", out), out[-3000:]
    assert checksum(out) == reference
    assert re.search(r"node 1: partition -> partitioned \(attempt 0, switch port p1 down\)",
                     out)
    assert re.search(r"node 1: heal -> no faults \(attempt 1, switch port p1 up\)", out)


def test_a_partitioned_node_without_restarts_is_the_root_cause_within_timeout_and_grace(job):
    j = job("--node-timeout", "10")
    j.wait_running()
    j.chaos(1, "partition")
    t0 = time.monotonic()
    code = j.finish()
    took = time.monotonic() - t0
    assert code == 137, j.output[-3000:]
    assert re.search(r"root cause \(first failure\): node 1: exit 137: lost: its agent was "
                     r"unreachable for 1\ds", j.output), j.output[-3000:]
    # Lost at node-timeout (10 s; heartbeats every 0.5 s), stopped within grace (3 s); a few
    # seconds more for the processes to go and the summary on 2 loaded cores.
    lost_after = j.when("fi-dist: node 1 lost") - t0
    assert 9.0 < lost_after < 10 + 2, lost_after
    assert took < 10 + 3 + 5, took


def test_sigkill_of_the_launcher_leaves_no_process_namespace_or_veth(job):
    j = job(step_sleep=0.05)
    run = j.wait_running()
    net = run.network()
    inodes = {net["switch_netns"], *(n["netns"] for n in net["nodes"].values())}
    assert len(inodes) == 3 and namespaces_left(inodes)  # the check sees them while they live
    assert procs.job_processes(run.run_id)
    j.proc.kill()
    t0 = time.monotonic()
    while (procs.job_processes(run.run_id) or namespaces_left(inodes)) and \
            time.monotonic() - t0 < 3 + 5:
        time.sleep(0.1)
    assert procs.job_processes(run.run_id) == [], "processes outlived the grace period"
    # The veths and the bridge live only in these namespaces: gone with them.
    assert namespaces_left(inodes) == set()


def test_hub_across_namespaces_unreachable_ports_break_all_and_a_partition(debug_job,
                                                                        tmp_path: Path):
    job: DebugJob = debug_job(2, 2, {"JOB_MODE": "break", "JOB_HOLD": "25"},
                              extra=("--network", "netns", "--node-timeout", "0", "--grace",
                                     "3", "--wait-for-client", "--code-server",
                                     "--code-server-port", "0"))
    cfg = job.config
    run = rundir.RunDir(job.run_dir())
    assert cfg["connect"]["host"] == "127.0.0.1"  # the host's end of the forward
    agents = {int(n): v["pid"] for n, v in run.read_run()["nodes"].items()}
    job.wait_states(lambda s: len(s) == 4)
    rank_pids = {r: v["pid"] for r, v in run.ranks().items()}

    # code-server listens in node 0's namespace; the URL it prints is the host's forward.
    deadline = time.monotonic() + 120
    while (editor := run.editor()) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert editor is not None, job.output()[-3000:]
    assert editor["url"].startswith("http://127.0.0.1:"), editor
    assert urllib.request.urlopen(editor["url"] + "healthz", timeout=10).status == 200

    # What node 0 listens on: the hub's IDE port on its own loopback, the hub's rank port
    # and the rendezvous on its address. Node 0's ranks listen on nothing.
    listening = [s for s in sockets(agents[0]) if s[2] == "0A"]
    loopback = {s[1] for s in listening if s[0] == "127.0.0.1"}
    assert cfg["connect"]["port"] in loopback, listening
    for r in (0, 1):
        assert not socket_inodes(rank_pids[r]) & {s[3] for s in listening}
    node1_ports = {s[1] for s in sockets(agents[1]) if s[2] == "0A"}

    def reach(address: tuple[str, int]) -> bool:
        try:
            socket.create_connection(address, timeout=2).close()
            return True
        except OSError:
            return False

    for port in loopback:  # from node 1: not through node 0's address, not on its own lo
        assert not in_netns_of(agents[1], lambda p=port: reach(("10.244.0.2", p)))
        if port not in node1_ports:
            assert not in_netns_of(agents[1], lambda p=port: reach(("127.0.0.1", p)))
    rank_port = json.loads((run.path / "debug.json").read_text())["rank_port"]
    assert in_netns_of(agents[1], lambda: reach(("10.244.0.2", rank_port)))  # the control

    # One attach through the forward reaches all 4 ranks; a stop on node 1 stops node 0.
    line = marker_line(job.script, "LAST-RANK-LINE")
    client = JobClient(cfg, breakpoints={str(job.script): [line]})
    try:
        client.attach()
        children = client.wait_children(4, timeout=120)
        assert client.child_names[3] == "rank 3 (node 1)"
        stops = {r: s.wait_event("stopped", timeout=120) for r, s in children.items()}
        assert stops[3]["body"]["reason"] == "breakpoint"
        assert all(stops[r]["body"]["reason"] == "pause" for r in (0, 1, 2))

        # Node 1 partitioned while paused: shown unreachable, the IDE told, node 0 usable.
        subprocess.run(fi_dist_cmd("chaos", "--node", "1", "partition"), cwd=tmp_path,
                       check=True, capture_output=True, timeout=60)
        note = client.root.wait_event("output", 30, lambda e: "unreachable" in
                                      e["body"]["output"])["body"]
        assert note["category"] == "important" and "(node 1) is unreachable" in note["output"]
        states = job.wait_states(lambda s: s[2].startswith("unreachable"))
        assert states[3].startswith("unreachable (node 1") and states[0].startswith("paused")
        frame = client.top_frame(0, stops[0]["body"]["threadId"])
        assert client.evaluate(0, "__import__('torch').distributed.get_rank()",
                               frame["id"]) == "0"

        subprocess.run(fi_dist_cmd("chaos", "--node", "1", "heal"), cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
        back: set[str] = set()
        while len(back) < 2:  # TCP retransmits what waited: the hub hears both ranks again
            text = client.root.wait_event("output", 60, lambda e: "reachable again" in
                                          e["body"]["output"])["body"]["output"]
            back.add(text.split(" is ")[0])
        assert back == {"fi-dist: rank 2 (node 1)", "fi-dist: rank 3 (node 1)"}
        children[3].request("continue", {"threadId": stops[3]["body"]["threadId"]})
        for r in (0, 1, 2):
            children[r].wait_event("continued", timeout=30)
    finally:
        client.close()
    assert job.wait(120) == 0, job.output()[-3000:]


def test_without_privileges_the_error_names_what_is_missing():
    # Another user (uid 65534, no capabilities): exit 2 and one line, before anything exists.
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *fi_dist_cmd("run", "--network", "netns", "--nnodes", "2",
                                     str(EXAMPLES / "ddp_train.py"))],
                       cwd="/", capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith("fi-dist: error: --network netns needs CAP_SYS_ADMIN and "
                               "CAP_NET_ADMIN (run as root, as CI does; uid 65534 here)"), p.stderr
    assert "--network loopback (the default)" in p.stderr
