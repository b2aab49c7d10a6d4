"""Network namespaces for ``fi-dist run --network netns``: one switch, one namespace per node.

One run's network, all inside namespaces the run creates (the host's own network
namespace, interfaces and routes are never touched)::

    switch namespace   bridge br0 = 10.244.0.1/24 (the "control plane": node heartbeats)
                       ports p0 .. pN-1, one veth end per node
    node k namespace   lo, eth0 = 10.244.0.(k+2)/24 (the other veth end, "pod IP");
                       processes enter it through netns_enter: hostname = the pod's name,
                       /etc/hosts = the run's hosts file (every pod's name)

The namespaces are **anonymous**: made by ``unshare(CLONE_NEWNET)`` in a short-lived
thread of the launcher and held by file descriptors, never bound to a name under
``/run/netns``. When the launcher is gone and the last process in a namespace has
exited, the kernel frees the namespace, and with it its veths, bridge, qdiscs and TUN
devices: even a SIGKILLed ``fi-dist run`` leaves no network object behind.

Commands run inside a namespace through ``nsenter --net=/proc/<launcher>/fd/<fd>``;
sockets are made inside one by a thread that enters it (:func:`in_netns`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fi_dist.errors import ConfigError

SUBNET = "10.244.0"
"""The run's node subnet (/24), only ever routed inside the run's own namespaces."""
CONTROL_ADDR = f"{SUBNET}.1"
"""The switch's own address: where node agents send their heartbeats."""
MAX_NODES = 253
"""10.244.0.2 .. 10.244.0.254."""
CLONE_NEWNET = 0x40000000
ENTER_SCRIPT = Path(__file__).with_name("netns_enter.py")
"""What runs first in a node: enters its namespaces, then execs the node agent."""
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

T = TypeVar("T")


class NetnsError(ConfigError):
    """Network namespaces cannot be made here; the message names what is missing."""


def node_addr(node: int) -> str:
    """Node ``node``'s own address ("pod IP") on the run's switch."""
    return f"{SUBNET}.{node + 2}"


def tool(name: str) -> str | None:
    """Where the command ``name`` is (sbin directories too: a non-root PATH lacks them)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN))


def _capabilities() -> int:
    try:
        for text in Path("/proc/self/status").read_text().splitlines():
            if text.startswith("CapEff:"):
                return int(text.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def missing(caps: int | None = None, which: Callable[[str], str | None] = tool,
            platform: str = sys.platform) -> list[str]:
    """What this process lacks to run nodes in network namespaces (empty: nothing)."""
    if platform != "linux":
        return [f"Linux network namespaces (this is {platform})"]
    caps = _capabilities() if caps is None else caps
    out = []
    need = [n for bit, n in ((_CAP_SYS_ADMIN, "CAP_SYS_ADMIN"), (_CAP_NET_ADMIN, "CAP_NET_ADMIN"))
            if not caps >> bit & 1]
    if need:
        out.append(f"{' and '.join(need)} (run as root, as CI does; uid {os.geteuid()} "
                   "here)")
    out += [f"the `{cmd}` command ({pkg}: apt-get install {pkg})"
            for cmd, pkg in (("ip", "iproute2"), ("nsenter", "util-linux"))
            if which(cmd) is None]
    return out


def check_support() -> None:
    """Raises:
        NetnsError: privileges or commands are missing; the message names each one.
    """
    if lacks := missing():
        raise NetnsError("--network netns needs " + "; ".join(lacks) + ". Without them use "
                         "--network loopback (the default).")


def _libc() -> Any:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread of its own (namespace changes stay in that thread)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name="fi-dist-netns")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise NetnsError(f"{what}: {os.strerror(err)}")


def new_netns() -> int:
    """A new, empty network namespace; returns a file descriptor that holds it."""
    def make() -> int:
        _check(_libc().unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    return _in_thread(make)


def in_netns(fd: int, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that has entered the namespace ``fd``.

    Sockets and TUN devices made by ``fn`` stay in that namespace for their whole life.
    """
    def run() -> T:
        _check(_libc().setns(fd, CLONE_NEWNET), "setns(CLONE_NEWNET)")
        return fn()

    return _in_thread(run)


def netns_inode(path: str) -> int:
    """The namespace's inode (``net:[N]`` in /proc/<pid>/ns/net)."""
    return os.stat(path).st_ino


def hosts_text(hostnames: list[str]) -> str:
    """The run's /etc/hosts: localhost and every node's pod name at its address."""
    names = [("127.0.0.1", "localhost"), (CONTROL_ADDR, "fi-dist-switch"),
             *((node_addr(k), name) for k, name in enumerate(hostnames))]
    lines = [f"{addr}\t{name}" for addr, name in names]
    lines.append("::1\tlocalhost ip6-localhost ip6-loopback")
    # TCPStore listens on IPv6 and names its peers by their IPv4-mapped address: without
    # these lines every lookup goes to a DNS server the namespace cannot reach.
    lines += [f"::ffff:{addr}\t{name}" for addr, name in names]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Namespace:
    """One namespace the run holds open."""

    fd: int
    label: str
    """``switch`` or ``node K``."""

    @property
    def path(self) -> str:
        """A path other processes open to enter it (while this process lives)."""
        return f"/proc/{os.getpid()}/fd/{self.fd}"


class Network:
    """One run's switch and node namespaces (see the module docstring)."""

    def __init__(self, hostnames: list[str], workdir: Path) -> None:
        """Create, wire and address every namespace.

        Args:
            hostnames: each node's pod name (``<job>-master-0``, ``<job>-worker-K``).
            workdir: where the hosts file goes (a run directory).

        Raises:
            NetnsError: a namespace or a link could not be made.
        """
        if not 1 <= len(hostnames) <= MAX_NODES:
            raise NetnsError(f"--network netns runs 1..{MAX_NODES} nodes, got {len(hostnames)}")
        self.hostnames = list(hostnames)
        self.hosts = workdir / "hosts"
        self.hosts.parent.mkdir(parents=True, exist_ok=True)
        self.hosts.write_text(hosts_text(self.hostnames))
        os.chmod(self.hosts, 0o644)
        self.switch: Namespace | None = None
        self.nodes: list[Namespace] = []
        try:
            self.switch = Namespace(new_netns(), "switch")
            self.nodes = [Namespace(new_netns(), f"node {k}") for k in range(len(hostnames))]
            self._wire()
        except BaseException:
            self.close()
            raise

    @property
    def nnodes(self) -> int:
        return len(self.nodes)

    def _wire(self) -> None:
        assert self.switch is not None
        cmds = ["link set lo up", "link add br0 type bridge", f"addr add {CONTROL_ADDR}/24 "
                "dev br0", "link set br0 up"]
        for k, ns in enumerate(self.nodes):
            cmds += [f"link add p{k} type veth peer name eth0 netns {ns.path}",
                     f"link set p{k} master br0", f"link set p{k} up"]
        self.ip(self.switch, cmds)
        for k, ns in enumerate(self.nodes):
            self.ip(ns, ["link set lo up", f"addr add {node_addr(k)}/24 dev eth0",
                         "link set eth0 up"])

    def run(self, ns: Namespace, argv: list[str], stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (``ip``, ``tc``) inside ``ns``."""
        p = subprocess.run([tool("nsenter") or "nsenter", f"--net={ns.path}", *argv],
                           input=stdin, capture_output=True, text=True, timeout=30)
        if check and p.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} in the {ns.label} namespace failed: "
                             f"{(p.stderr or p.stdout).strip()}")
        return p

    def ip(self, ns: Namespace, cmds: list[str]) -> None:
        """``ip -batch``: every command in one process (a run's setup is 2 + N of them)."""
        self.run(ns, [tool("ip") or "ip", "-batch", "-"], stdin="\n".join(cmds) + "\n")

    def node(self, k: int) -> Namespace:
        if not 0 <= k < len(self.nodes):
            raise ConfigError(f"--node {k} is outside 0..{len(self.nodes) - 1}")
        return self.nodes[k]

    def enter_argv(self, k: int, argv: list[str], python: str = sys.executable) -> list[str]:
        """``argv`` run inside node ``k``: its namespace, hostname and hosts file.

        The entry script is standard library only and runs isolated, without site
        (``-I -S``): a node start pays ~20 ms for it, not a full interpreter start-up.
        """
        return [python, "-I", "-S", str(ENTER_SCRIPT), "--netns", self.node(k).path,
                "--hosts", str(self.hosts), "--hostname", self.hostnames[k], "--", *argv]

    def socket_in(self, k: int | None, family: int = socket.AF_INET,
                  kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in node ``k``'s namespace (the switch's when None)."""
        ns = self.switch if k is None else self.node(k)
        assert ns is not None
        return in_netns(ns.fd, lambda: socket.socket(family, kind))

    def connect_in(self, k: int, address: tuple[str, int], timeout: float = 5.0
                   ) -> socket.socket:
        """A TCP connection made from inside node ``k`` (``kubectl port-forward``'s dial)."""
        return in_netns(self.node(k).fd,
                        lambda: socket.create_connection(address, timeout=timeout))

    def set_link(self, k: int, up: bool) -> None:
        """Node ``k``'s port on the switch up or down (down: a network partition)."""
        assert self.switch is not None
        self.node(k)
        self.ip(self.switch, [f"link set p{k} {'up' if up else 'down'}"])

    def describe(self) -> dict[str, Any]:
        """Where everything is, for the run directory (tests check the inodes are gone)."""
        assert self.switch is not None
        return {"mode": "netns", "subnet": f"{SUBNET}.0/24", "control": CONTROL_ADDR,
                "hosts": str(self.hosts), "switch_netns": netns_inode(self.switch.path),
                "nodes": {k: {"addr": node_addr(k), "hostname": self.hostnames[k],
                              "netns": netns_inode(ns.path)}
                          for k, ns in enumerate(self.nodes)}}

    def close(self) -> None:
        """Let go of every namespace (freed once no process is left in it)."""
        for ns in [*self.nodes, *([self.switch] if self.switch else [])]:
            with contextlib.suppress(OSError):
                os.close(ns.fd)
        self.nodes = []
        self.switch = None
