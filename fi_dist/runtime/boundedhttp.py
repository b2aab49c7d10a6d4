"""A small HTTP/1.0 server whose threads, memory and log stay bounded whatever clients do.

``http.server.ThreadingHTTPServer`` keeps one thread per connection, idle or not, with
no timeout, and prints a traceback for every client that hangs up early. This server:

* accepts on one thread that also reads each request's *head* (request line and
  headers) without blocking: a connection whose head is not complete within
  ``head_deadline`` seconds of its accept is closed (so credentials must arrive by then),
  a head over ``max_head`` bytes gets 431, and at most ``max_pending`` connections wait
  for their head (the oldest is closed for a new one);
* hands complete heads to a fixed pool of ``workers`` threads (a full queue gets 503),
  whose socket reads and writes time out after ``io_timeout`` seconds;
* counts client disconnects, refusals and handler errors and logs each kind at most once
  a second, with the count (:class:`QuietLog`), never a traceback.

The handler is a :class:`http.server.BaseHTTPRequestHandler` subclass, as for
``http.server``; it reads the head the acceptor already has, then the socket.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any


class QuietLog:
    """Counts events of one kind; logs at most one line per ``interval`` with the count."""

    def __init__(self, logger: logging.Logger, what: str, level: int = logging.INFO,
                 interval: float = 1.0) -> None:
        self.logger, self.what, self.level, self.interval = logger, what, level, interval
        self.total = 0
        self._count = 0
        self._last_detail = ""
        self._last_emit = float("-inf")
        self._lock = threading.Lock()

    def note(self, detail: str = "") -> None:
        with self._lock:
            self.total += 1
            self._count += 1
            self._last_detail = detail
            if time.monotonic() - self._last_emit >= self.interval:
                self._emit()

    def flush(self) -> None:
        with self._lock:
            if self._count:
                self._emit()

    def _emit(self) -> None:
        self.logger.log(self.level, "%s: %d %s (last: %s)", self.logger.name, self._count,
                        self.what, self._last_detail or "-")
        self._count = 0
        self._last_emit = time.monotonic()


class _Prefixed(io.RawIOBase):
    """The bytes the acceptor already read, then the socket."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(buf)


class BoundedHandler(BaseHTTPRequestHandler):
    """Base handler: reads the prefetched head, logs through the server's quiet logs."""

    server: BoundedHTTPServer  # type: ignore[assignment]
    prefix = b""

    def setup(self) -> None:
        super().setup()
        self.rfile = io.BufferedReader(_Prefixed(self.prefix, self.connection))

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.debug("%s " + format, self.client_address[0], *args)


@dataclass
class _Pending:
    sock: socket.socket
    addr: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)


_STOP = object()


class BoundedHTTPServer:
    """Serve ``handler`` on ``address`` with bounded threads (see the module docstring)."""

    def __init__(self, address: tuple[str, int], handler: type[BoundedHandler],
                 log: logging.Logger, *, workers: int = 4, max_pending: int = 64,
                 head_deadline: float = 5.0, io_timeout: float = 10.0,
                 max_head: int = 16 << 10, name: str = "fi-dist-http") -> None:
        self.handler, self.log, self.name = handler, log, name
        self.workers, self.max_pending = workers, max_pending
        self.head_deadline, self.io_timeout, self.max_head = head_deadline, io_timeout, max_head
        self.disconnects = QuietLog(log, "client connection(s) ended early")
        self.timeouts = QuietLog(log, "connection(s) closed: no complete request in time")
        self.errors = QuietLog(log, "request(s) failed in the handler", logging.WARNING)
        self.listener = socket.create_server(address, backlog=128)
        self.listener.setblocking(False)
        self.server_address = self.listener.getsockname()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self._pending: dict[socket.socket, _Pending] = {}
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, spawn: Any = None) -> BoundedHTTPServer:
        """Start the acceptor and the workers (``spawn(target, name)`` makes each thread)."""
        spawn = spawn or _daemon
        self._threads = [spawn(self._accept_loop, f"{self.name}-accept")]
        self._threads += [spawn(self._work, f"{self.name}-{i}") for i in range(self.workers)]
        return self

    def close(self) -> None:
        """Stop accepting, close every waiting connection, let the workers end."""
        self._stop.set()
        if self._threads:
            self._done.wait(2.0)
        while True:  # requests nobody will serve now: closed, and room for the stops
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                with contextlib.suppress(OSError):
                    item[0].close()
        for _ in range(self.workers):
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)
        for p in list(self._pending.values()):
            self._drop(p)
        with contextlib.suppress(OSError):
            self.listener.close()
        for q in (self.disconnects, self.timeouts, self.errors):
            q.flush()

    # --- the acceptor: heads without threads ---------------------------------------------
    def _accept_loop(self) -> None:
        self._selector.register(self.listener, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=0.2):
                    try:
                        if key.fileobj is self.listener:
                            self._accept()
                        elif p := self._pending.get(key.fileobj):  # type: ignore[call-overload]
                            self._read_head(p)  # (None: dropped earlier in this batch)
                    except Exception as exc:  # the acceptor must outlive any one connection
                        self.errors.note(f"acceptor: {type(exc).__name__}: {exc}")
                self._expire()
        finally:
            self._selector.close()
            self._done.set()

    def _accept(self) -> None:
        for _ in range(64):  # drain a burst, then look at the waiting connections again
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: refuse quietly, keep serving
                self.errors.note(f"accept: {exc}")
                return
            if len(self._pending) >= self.max_pending:  # the oldest waiter makes room
                oldest = min(self._pending.values(), key=lambda p: p.deadline)
                self.timeouts.note(f"{oldest.addr[0]} (evicted by a newer connection)")
                self._drop(oldest)
            sock.setblocking(False)
            p = _Pending(sock, addr, time.monotonic() + self.head_deadline)
            self._pending[sock] = p
            self._selector.register(sock, selectors.EVENT_READ)

    def _read_head(self, p: _Pending) -> None:
        try:
            data = p.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.disconnects.note(f"{p.addr[0]}: {exc.strerror or exc}")
            self._drop(p)
            return
        if not data:
            self.disconnects.note(f"{p.addr[0]}: closed before a complete request")
            self._drop(p)
            return
        p.head += data
        if b"\r\n\r\n" in p.head or b"\n\n" in p.head:
            self._unwatch(p)
            try:
                self._queue.put_nowait((p.sock, p.addr, bytes(p.head)))
            except queue.Full:
                self._refuse(p.sock, 503, "busy")
        elif len(p.head) > self.max_head:
            self._unwatch(p)
            self._refuse(p.sock, 431, "request head too large")

    def _expire(self) -> None:
        now = time.monotonic()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self.timeouts.note(f"{p.addr[0]}")
            self._drop(p)

    def _unwatch(self, p: _Pending) -> None:
        self._pending.pop(p.sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(p.sock)

    def _drop(self, p: _Pending) -> None:
        self._unwatch(p)
        with contextlib.suppress(OSError):
            p.sock.close()

    def _refuse(self, sock: socket.socket, code: int, reason: str) -> None:
        with contextlib.suppress(OSError):
            sock.send(f"HTTP/1.0 {code} {reason}\r\nContent-Length: 0\r\n"
                      "Connection: close\r\n\r\n".encode())
        with contextlib.suppress(OSError):
            sock.close()

    # --- the workers ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            sock, addr, head = item
            try:
                sock.setblocking(True)
                sock.settimeout(self.io_timeout)
                # BaseRequestHandler serves from __init__: the head goes on first.
                handler = self.handler.__new__(self.handler)
                handler.prefix = head
                handler.__init__(sock, addr, self)  # type: ignore[misc]
            except (ConnectionError, TimeoutError, OSError) as exc:
                self.disconnects.note(f"{addr[0]}: {type(exc).__name__}")
            except Exception as exc:  # a handler bug must not end the worker
                self.errors.note(f"{type(exc).__name__}: {exc}")
                self.log.debug("request handler failed", exc_info=True)
            finally:
                with contextlib.suppress(OSError):
                    sock.close()


def _daemon(target: Any, name: str) -> threading.Thread:
    t = threading.Thread(target=target, name=name, daemon=True)
    t.start()
    return t
