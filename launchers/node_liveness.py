"""Is each node still there? Heartbeats in, a pure state machine decides.

Every node agent sends a heartbeat every 0.5 s over its own network
(:mod:`fi_dist.runtime.node_link`). The launcher receives them
(:class:`HeartbeatReceiver`) and feeds :class:`Liveness`, the state machine that says
when a node is unreachable (shown in ``fi-dist status``) and when it is lost (failed,
like a NotReady node whose pod is evicted: the supervisor stops the attempt and the
job restarts within ``--max-restarts``). Time is always passed in, so the machine is
tested as a table.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from fi_dist.contract import parse_heartbeat

SUSPECT_AFTER = 2.0
"""Seconds of silence (four missed heartbeats) after which a node shows as unreachable."""


class NodeState(StrEnum):
    """REACHABLE -(silent SUSPECT_AFTER s)-> UNREACHABLE -(a heartbeat)-> REACHABLE.

    UNREACHABLE -(silent ``timeout`` s, when > 0)-> LOST, final for the attempt. An
    attempt's start counts as a heartbeat: a node that never reports is lost too.
    """

    REACHABLE = "reachable"
    UNREACHABLE = "unreachable"
    LOST = "lost"


@dataclass(frozen=True)
class Change:
    """Node ``node`` entered ``state`` after ``silent_for`` seconds without a heartbeat."""

    node: int
    state: NodeState
    silent_for: float


class Liveness:
    """The nodes of one attempt: last heartbeat and state of each."""

    def __init__(self, timeout: float, suspect_after: float = SUSPECT_AFTER) -> None:
        """``timeout``: seconds of silence before a node is lost (0: never)."""
        self.timeout = timeout
        self.suspect_after = suspect_after
        self.last: dict[int, float] = {}
        self.state: dict[int, NodeState] = {}

    def start(self, nodes: list[int], now: float) -> None:
        """A new attempt: every node reachable, as if it had just beaten."""
        self.last = dict.fromkeys(nodes, now)
        self.state = dict.fromkeys(nodes, NodeState.REACHABLE)

    def beat(self, node: int, now: float) -> None:
        """A heartbeat from ``node`` (ignored for unknown and lost nodes)."""
        if self.state.get(node) not in (None, NodeState.LOST):
            self.last[node] = max(self.last[node], now)

    def forget(self, node: int) -> None:
        """``node``'s agent has exited: its silence from now on means nothing."""
        self.last.pop(node, None)
        self.state.pop(node, None)

    def check(self, now: float) -> list[Change]:
        """The state changes due at ``now``, in node order."""
        out = []
        for node in sorted(self.state):
            old = self.state[node]
            if old is NodeState.LOST:
                continue
            silent = now - self.last[node]
            if self.timeout > 0 and silent >= self.timeout:
                new = NodeState.LOST
            elif silent >= self.suspect_after:
                new = NodeState.UNREACHABLE
            else:
                new = NodeState.REACHABLE
            if new is not old:
                self.state[node] = new
                out.append(Change(node, new, silent))
        return out


class HeartbeatReceiver:
    """Reads heartbeat datagrams of one run from a bound UDP socket, in a thread."""

    def __init__(self, sock: socket.socket, run_id: str,
                 on_beat: Callable[[int, int], None]) -> None:
        """``on_beat(node, attempt)`` runs in the receiver's thread for each heartbeat."""
        self.sock = sock
        self.run_id = run_id
        self.on_beat = on_beat
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="fi-dist-heartbeats",
                                        daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """``HOST:PORT`` the node agents send to (the contract's ``heartbeat``)."""
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def _loop(self) -> None:
        self.sock.settimeout(0.5)  # wakes to see close() whatever the kernel does
        while not self._stop:
            try:
                data, _ = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            beat = parse_heartbeat(data)
            if beat is not None and beat[0] == self.run_id:
                self.on_beat(beat[1], beat[2])

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
