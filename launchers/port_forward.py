"""A local TCP port forwarded into a node's namespace: ``kubectl port-forward`` for netns nodes.

The hub's IDE port listens on node 0's own loopback, as in a pod. The IDE reaches it
the way it reaches a pod: ``127.0.0.1:<port>`` on the host is forwarded, one connection
at a time, to ``127.0.0.1:<port>`` inside node 0's namespace (each forwarded connection
is dialled from inside that namespace). The listener binds the host's loopback only;
what it forwards to still demands the job token (the hub's attach check).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger("fi_dist.launchers.port_forward")


class PortForward:
    """``127.0.0.1:local_port`` -> whatever ``dial()`` connects to, until :meth:`close`."""

    def __init__(self, local_port: int, dial: Callable[[], socket.socket],
                 host: str = "127.0.0.1") -> None:
        self.server = socket.create_server((host, local_port))
        self.local_port = self.server.getsockname()[1]
        self.dial = dial
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="fi-dist-forward", daemon=True).start()

    def _accept(self) -> None:
        self.server.settimeout(0.5)  # wakes to see close()
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        try:
            remote = self.dial()
        except OSError as exc:  # the hub is not up yet, or gone: the IDE sees a refusal
            log.info("forward to the hub: %s", exc)
            client.close()
            return
        remote.settimeout(None)
        for s in (client, remote):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._closed:
                client.close()
                remote.close()
                return
            self._conns.update((client, remote))
        done = threading.Barrier(2, action=lambda: self._drop(client, remote))
        for a, b in ((client, remote), (remote, client)):
            threading.Thread(target=_pipe, args=(a, b, done), daemon=True).start()

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._conns.discard(s)
                s.close()

    def close(self) -> None:
        """Stop listening and cut every forwarded connection."""
        self._closed = True
        self.server.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def _pipe(src: socket.socket, dst: socket.socket, done: threading.Barrier) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
    with contextlib.suppress(threading.BrokenBarrierError):
        done.wait()
