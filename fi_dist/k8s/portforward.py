"""Forward a local loopback port to a port inside a pod (``kubectl port-forward``).

Each local connection opens its own port-forward stream through the kubernetes
client (``kubernetes.stream.portforward``) and is pumped both ways until one side
closes. The listener binds 127.0.0.1 only: the hub port is a remote-code-execution
port and must not be reachable from the network.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
from typing import Any

log = logging.getLogger("fi_dist.k8s.portforward")


def _pump(a: Any, b: Any) -> None:
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in sel.select():
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError as exc:
        log.debug("port-forward connection ended: %s", exc)
    finally:
        sel.close()


class PortForward:
    """Local ``host:local_port`` -> ``pod:remote_port`` in ``namespace``."""

    def __init__(self, core_api: Any, namespace: str, pod: str, remote_port: int,
                 local_port: int = 0, host: str = "127.0.0.1") -> None:
        self.core = core_api
        self.namespace = namespace
        self.pod = pod
        self.remote_port = remote_port
        self._listener = socket.create_server((host, local_port))
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()

    def start(self) -> PortForward:
        threading.Thread(target=self._accept, daemon=True,
                         name=f"port-forward {self.local_port}").start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        from kubernetes.stream import portforward

        try:
            pf = portforward(self.core.connect_get_namespaced_pod_portforward, self.pod,
                             self.namespace, ports=str(self.remote_port))
        except Exception as exc:  # the API refused: say so on the client's side
            log.error("port-forward to %s/%s:%s failed: %s", self.namespace, self.pod,
                      self.remote_port, exc)
            conn.close()
            return
        remote = pf.socket(self.remote_port)
        try:
            _pump(conn, remote)
        finally:
            conn.close()
            pf.close()
