"""This rank's debugger, reached through the agent only: no listener is left in the rank.

``debugpy.listen()`` leaves an adapter listening on loopback that serves any local
client without a token: another user of the node (or a sidecar sharing the pod's
loopback) could attach, evaluate code in the rank, or hold the only session. Instead
the rank runs pydevd (debugpy's bundled debugger, which speaks DAP itself) in client
mode against a one-shot listener of the agent's:

1. the agent listens on ``127.0.0.1:0`` and starts pydevd, which dials that port;
2. it keeps the one connection whose peer is pydevd's own socket (the address pydevd
   connected from, read back from pydevd) and closes the listener and anything else at
   once, so the listener exists only while pydevd connects;
3. pydevd is given an access token (a fresh secret that never leaves this process) and
   refuses every request until ``pydevdAuthorize`` presents it; the agent presents it at
   the start of each hub session and ends each session with a ``disconnect`` (pydevd
   then resumes every thread and forgets the session's breakpoints).

The hub's sessions come and go over this one connection (:meth:`PydevdLink.serve`);
between sessions pydevd's events are read and dropped.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import os
import secrets
import socket
import threading
from concurrent.futures import Future
from typing import Any

from fi_dist.runtime.debug.protocol import ProtocolError, SyncChannel, encode

log = logging.getLogger("fi_dist.debug.agent")

OWN_SEQ_BASE = 1 << 40
"""The link's own requests use sequence numbers no client reaches."""
CONNECT_TIMEOUT = 15.0
REQUEST_TIMEOUT = 15.0


class PydevdLinkError(RuntimeError):
    """pydevd could not be started or reached through the agent."""


def debugger_thread(target: Any, *args: Any, name: str) -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    # pydevd skips threads carrying these flags when it suspends or traces.
    t.pydev_do_not_trace = True  # type: ignore[attr-defined]
    t.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
    t.start()
    return t


def _close_listener(listener: socket.socket) -> None:
    # close() alone leaves the socket listening while the accept thread is blocked in
    # accept(); shutdown() wakes that thread and takes the port down at once.
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


class PydevdLink:
    """The agent's one connection to this process's pydevd."""

    def __init__(self) -> None:
        self._secret = secrets.token_hex(32)
        self._sock: socket.socket | None = None
        self._session: socket.socket | None = None
        self._session_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._seq = itertools.count(OWN_SEQ_BASE)
        self._waiting: dict[int, Future[dict[str, Any]]] = {}
        self.closed = threading.Event()

    # --- start --------------------------------------------------------------------------
    def start(self) -> None:
        """Start pydevd connected to this link (call once, on the main thread).

        Raises:
            PydevdLinkError: pydevd did not connect, or this debugpy lacks what it needs.
        """
        import debugpy
        from debugpy.server import api

        # Importable only once debugpy.server has put its vendored copy on the path.
        pydevd = importlib.import_module("pydevd")
        api.ensure_logging()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        accepted: list[socket.socket] = []
        debugger_thread(self._accept, listener, accepted, name="fi-dist-pydevd-accept")
        try:
            # What debugpy.listen()/connect() pass, minus the adapter; the access token
            # makes pydevd refuse every request until it is presented.
            pydevd.settrace(
                host="127.0.0.1", port=listener.getsockname()[1], suspend=False,
                patch_multiprocessing=False, wait_for_ready_to_run=False,
                block_until_connected=True, notify_stdin=False, access_token=self._secret,
                dont_trace_start_patterns=(os.path.dirname(os.path.abspath(debugpy.__file__)),),
                dont_trace_end_patterns=("debugpy_launcher.py",))
            own = getattr(pydevd.get_global_debugger(), "_client_socket", None)
            if own is None:
                raise PydevdLinkError("this pydevd does not expose its client socket")
            expected = own.getsockname()
            sock = self._take(accepted, expected, listener)
        finally:
            _close_listener(listener)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        debugger_thread(self._read, name="fi-dist-pydevd-reader")

    @staticmethod
    def _accept(listener: socket.socket, accepted: list[socket.socket]) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)

    @staticmethod
    def _take(accepted: list[socket.socket], expected: tuple[str, int],
              listener: socket.socket) -> socket.socket:
        """The accepted connection that is pydevd's; every other one is closed."""
        import time

        deadline = time.monotonic() + CONNECT_TIMEOUT
        mine: socket.socket | None = None
        while mine is None and time.monotonic() < deadline:
            for conn in list(accepted):
                with contextlib.suppress(OSError):
                    if conn.getpeername() == expected:
                        mine = conn
            if mine is None:
                time.sleep(0.01)
        _close_listener(listener)
        for conn in accepted:
            if conn is not mine:
                log.warning("fi-dist debug agent: closed a foreign connection to the "
                            "one-shot pydevd listener")
                conn.close()
        if mine is None:
            raise PydevdLinkError("pydevd did not connect to the agent within "
                                  f"{CONNECT_TIMEOUT:g}s")
        return mine

    # --- pydevd -> whoever is served ----------------------------------------------------
    def _read(self) -> None:
        assert self._sock is not None
        chan = SyncChannel(self._sock)
        try:
            while (msg := chan.read()) is not None:
                if msg.get("type") == "response" and (
                        fut := self._waiting.pop(int(msg.get("request_seq", -1)), None)):
                    fut.set_result(msg)
                    continue
                session = self._session
                if session is not None:
                    with contextlib.suppress(OSError):
                        session.sendall(encode(msg))
        except (OSError, ProtocolError) as exc:
            log.warning("fi-dist debug agent: pydevd connection lost: %s", exc)
        finally:
            self.closed.set()
            for fut in self._waiting.values():
                fut.set_exception(PydevdLinkError("pydevd connection closed"))
            self._waiting.clear()

    def _request(self, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._sock is None or self.closed.is_set():
            raise PydevdLinkError("pydevd is not connected")
        seq = next(self._seq)
        fut: Future[dict[str, Any]] = Future()
        self._waiting[seq] = fut
        with self._send_lock:
            self._sock.sendall(encode({"seq": seq, "type": "request", "command": command,
                                       "arguments": arguments}))
        return fut.result(REQUEST_TIMEOUT)

    def _authorize(self) -> None:
        resp = self._request("pydevdAuthorize", {"debugServerAccessToken": self._secret})
        if not resp.get("success"):
            raise PydevdLinkError(f"pydevd refused the agent: {resp.get('message')}")

    # --- sessions -----------------------------------------------------------------------
    def serve(self, up: socket.socket, pending: bytes = b"") -> None:
        """Serve one hub session over ``up`` (an authenticated hub connection) until it closes.

        ``pending``: bytes of the session already read off ``up`` (behind the handshake).

        Sessions are served one at a time; each ends with pydevd resuming every thread and
        forgetting the session's breakpoints, whatever the hub sent.
        """
        with self._session_lock:
            try:
                self._authorize()
            except (PydevdLinkError, OSError, TimeoutError) as exc:
                log.warning("fi-dist debug agent: cannot open a debug session: %s", exc)
                up.close()
                return
            self._session = up
            try:
                if pending:
                    with self._send_lock:
                        self._sock.sendall(pending)  # type: ignore[union-attr]
                self._pump(up)
            finally:
                self._session = None
                with contextlib.suppress(PydevdLinkError, OSError, TimeoutError):
                    self._authorize()
                    self._request("disconnect", {"terminateDebuggee": False})
                with contextlib.suppress(OSError):
                    up.shutdown(socket.SHUT_RDWR)
                up.close()

    def _pump(self, up: socket.socket) -> None:
        """Hub -> pydevd, byte for byte (no request of the link's own runs meanwhile)."""
        assert self._sock is not None
        with contextlib.suppress(OSError):
            while chunk := up.recv(65536):
                with self._send_lock:
                    self._sock.sendall(chunk)
