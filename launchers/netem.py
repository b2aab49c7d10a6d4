"""Delay, jitter and loss on a node's outgoing traffic: ``tc netem``, or the same in user space.

``fi-dist chaos --node K delay MS [--jitter MS] | loss PCT`` shapes what node K sends,
like ``tc qdisc replace dev eth0 root netem delay MS JITTER loss PCT`` in its namespace:
every packet from K to another node (or to the switch) is held MS +- JITTER ms and
dropped with probability PCT %, so a round trip between K and a peer grows by MS.

Where the kernel has netem (``CONFIG_NET_SCH_NETEM``) that is what runs. Many VM and CI
kernels ship without it (the machines fi-dist is built on do), so otherwise a
user-space shaper does the same in the node's namespace, with nothing but a TUN device
and policy routing:

* a TUN device ``fdq0`` and a routing rule send the node's packets for the subnet to
  the launcher's shaper thread instead of ``eth0`` (``ip rule add not fwmark 1 lookup
  100``; table 100 routes the subnet via ``fdq0``);
* the thread holds each packet until its release time (:func:`release_at`) and sends it
  on through a raw socket marked 1, which the rule lets through to ``eth0``;
* order is kept (a packet never overtakes an earlier one: TCP sees jitter, not
  reordering, unlike netem's default), loss is decided per packet (:func:`dropped`).

Removing the fault removes the rule and closes the device (the kernel deletes it).
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import itertools
import os
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fi_dist.launchers.netns import SUBNET, Namespace, NetnsError, Network, in_netns, node_addr

TUN_NAME = "fdq0"
MARK = 1
TABLE = 100
RULE_PREF = 100
_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Shape:
    """What a node's outgoing traffic suffers (all zero: nothing)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)

    def netem_args(self) -> list[str]:
        """The same as ``tc ... netem`` arguments."""
        args = ["delay", f"{self.delay_ms:g}ms", f"{self.jitter_ms:g}ms"]
        return [*args, "loss", f"{self.loss_pct:g}%"]


def release_at(now: float, shape: Shape, last: float, rand: Callable[[], float]) -> float:
    """When a packet that arrived at ``now`` leaves: delay +- jitter, never before ``last``."""
    jitter = (2.0 * rand() - 1.0) * shape.jitter_ms
    return max(now + max(shape.delay_ms + jitter, 0.0) / 1000.0, last)


def dropped(shape: Shape, rand: Callable[[], float]) -> bool:
    """Whether a packet is lost (``loss_pct`` percent of them)."""
    return shape.loss_pct > 0 and rand() * 100.0 < shape.loss_pct


def netem_missing(stderr: str) -> bool:
    """``tc``'s answer when the kernel has no netem qdisc."""
    return "unknown" in stderr.lower() or "no such file" in stderr.lower()


@dataclass
class _Tap:
    node: int
    tun: int
    raw: socket.socket
    shape: Shape
    last: float = 0.0


class Shaper:
    """The shaping of every node of one :class:`~fi_dist.launchers.netns.Network`."""

    def __init__(self, network: Network, rand: Callable[[], float] = random.random) -> None:
        self.network = network
        self.rand = rand
        self.netem: bool | None = None
        """Whether the kernel's netem works (None: not tried yet)."""
        self._taps: dict[int, _Tap] = {}
        self._heap: list[tuple[float, int, int, bytes]] = []
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._thread: threading.Thread | None = None

    def set(self, k: int, shape: Shape) -> str:
        """Shape node ``k``'s outgoing traffic; returns the mechanism (``netem``, ``user space``).

        Raises:
            NetnsError: neither mechanism could be set up.
        """
        ns = self.network.node(k)
        if self.netem is not False:
            p = self.network.run(ns, ["tc", "qdisc", "replace", "dev", "eth0", "root",
                                      "netem", *shape.netem_args()], check=False)
            if p.returncode == 0:
                self.netem = True
                if not shape.active:
                    self.network.run(ns, ["tc", "qdisc", "del", "dev", "eth0", "root"],
                                     check=False)
                return "netem"
            if not netem_missing(p.stderr):
                raise NetnsError(f"tc netem on node {k}: {p.stderr.strip()}")
            self.netem = False
        self._set_user(k, ns, shape)
        return "user space (no netem in this kernel)"

    def _set_user(self, k: int, ns: Namespace, shape: Shape) -> None:
        with self._lock:
            tap = self._taps.get(k)
            if tap is not None:
                tap.shape = shape
        if tap is not None and shape.active:
            return
        if tap is not None:  # back to plain eth0
            self.network.ip(ns, [f"rule del pref {RULE_PREF}"])
            with self._lock:
                del self._taps[k]
                self._sel.unregister(tap.tun)
            os.close(tap.tun)
            tap.raw.close()
            return
        if not shape.active:
            return
        tun, raw = in_netns(ns.fd, _open_tap)
        try:
            self.network.ip(ns, [
                f"link set {TUN_NAME} addrgenmode none", f"link set {TUN_NAME} up",
                f"route replace {SUBNET}.0/24 dev {TUN_NAME} table {TABLE} src {node_addr(k)}",
                f"rule add pref {RULE_PREF} not fwmark {MARK} lookup {TABLE}"])
        except BaseException:
            os.close(tun)
            raw.close()
            raise
        with self._lock:
            self._taps[k] = _Tap(k, tun, raw, shape)
            self._sel.register(tun, selectors.EVENT_READ, k)
        self._ensure_thread()
        os.write(self._wake_w, b"x")

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fi-dist-netem",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._closed:
            with self._lock:
                wait = max(0.0, self._heap[0][0] - time.monotonic()) if self._heap else None
            try:
                ready = self._sel.select(wait)
            except (OSError, ValueError):  # closed under us
                return
            now = time.monotonic()
            for key, _ in ready:
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 512)
                    continue
                self._take(key.data, key.fd, now)
            self._release(time.monotonic())

    def _take(self, k: int, fd: int, now: float) -> None:
        for _ in range(64):  # drain what is queued, a bounded batch per wake-up
            try:
                pkt = os.read(fd, 65536)
            except (BlockingIOError, OSError):
                return
            with self._lock:
                tap = self._taps.get(k)
                if tap is None or not pkt or pkt[0] >> 4 != 4 or dropped(tap.shape, self.rand):
                    continue
                tap.last = release_at(now, tap.shape, tap.last, self.rand)
                heapq.heappush(self._heap, (tap.last, next(self._seq), k, pkt))

    def _release(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > now:
                    return
                _, _, k, pkt = heapq.heappop(self._heap)
                tap = self._taps.get(k)
            if tap is None:
                continue
            with contextlib.suppress(OSError):  # a partitioned node: the packet is lost
                tap.raw.sendto(pkt, (socket.inet_ntoa(pkt[16:20]), 0))

    def close(self) -> None:
        """Stop shaping (the devices and rules go with their namespaces)."""
        self._closed = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            taps, self._taps = list(self._taps.values()), {}
        for tap in taps:
            with contextlib.suppress(OSError):
                os.close(tap.tun)
            tap.raw.close()
        self._sel.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_tap() -> tuple[int, socket.socket]:
    """In the node's namespace: the TUN device and the raw socket that sends on via eth0."""
    tun = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(tun, _TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), _IFF_TUN | _IFF_NO_PI))
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    except OSError as exc:
        os.close(tun)
        raise NetnsError(f"user-space shaping needs /dev/net/tun and raw sockets: {exc}") from None
    return tun, raw
