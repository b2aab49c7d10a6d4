"""DAP wire format and the hub's rank handshake, shared by hub, rank agent and client.

DAP messages are ``Content-Length: N\\r\\n\\r\\n`` followed by N bytes of JSON. Every
reader here enforces a size cap and checks the JSON shape, so a malformed frame, a huge
Content-Length or bad JSON raises :class:`ProtocolError` (the caller logs it and closes
that one connection) instead of exhausting memory or killing the hub.

The rank side of the hub speaks one JSON line first (the *hello*: kind, token, rank...)
and then either JSON lines (control connection) or raw DAP bytes (data connection).
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

MAX_MESSAGE = 16 * 1024 * 1024
"""Largest DAP body accepted (variables of a big tensor repr stay far below it)."""
MAX_HEADER = 1024
"""Longest header block accepted before the blank line."""
MAX_LINE = 64 * 1024
"""Longest control line (hello, stack report) accepted on the rank side."""


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid message; the connection must be closed."""


def encode(message: dict[str, Any]) -> bytes:
    """One DAP frame for ``message``."""
    body = json.dumps(message, separators=(",", ":")).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def parse_header(header: bytes) -> int:
    """The Content-Length of a header block (without the final blank line)."""
    length: int | None = None
    for raw in header.split(b"\r\n"):
        if not raw:
            continue
        name, sep, value = raw.partition(b":")
        if not sep:
            raise ProtocolError(f"malformed header line {raw[:80]!r}")
        if name.strip().lower() == b"content-length":
            text = value.strip()
            if not text.isdigit():
                raise ProtocolError(f"Content-Length is not a number: {text[:40]!r}")
            length = int(text)
    if length is None:
        raise ProtocolError("header has no Content-Length")
    if length > MAX_MESSAGE:
        raise ProtocolError(f"Content-Length {length} exceeds the {MAX_MESSAGE}-byte cap")
    return length


def decode_body(body: bytes) -> dict[str, Any]:
    """Parse and shape-check one DAP body."""
    try:
        msg = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"body is not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"message is a {type(msg).__name__}, not an object")
    kind = msg.get("type")
    if kind not in ("request", "response", "event"):
        raise ProtocolError(f"message type {kind!r} is not request/response/event")
    if not isinstance(msg.get("seq", 0), int):
        raise ProtocolError(f"seq {msg.get('seq')!r} is not an integer")
    if kind == "request" and not isinstance(msg.get("command"), str):
        raise ProtocolError("request without a string command")
    if kind == "event" and not isinstance(msg.get("event"), str):
        raise ProtocolError("event without a string event name")
    if kind == "response" and not isinstance(msg.get("request_seq"), int):
        raise ProtocolError("response without an integer request_seq")
    args = msg.get("arguments")
    if args is not None and not isinstance(args, dict):
        raise ProtocolError("arguments is not an object")
    return msg


async def _read_until(reader: asyncio.StreamReader, sep: bytes, what: str,
                      too_long: str) -> bytes | None:
    """Bytes up to and including ``sep``; None at a clean end of stream."""
    try:
        return await reader.readuntil(sep)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError(f"stream ended inside {what}") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(too_long) from None


async def read_message(reader: asyncio.StreamReader, max_body: int = MAX_MESSAGE
                       ) -> dict[str, Any] | None:
    """Next DAP message, or None at a clean end of stream.

    Args:
        max_body: the largest body accepted (smaller before a client has authenticated).

    Raises:
        ProtocolError: malformed header, over-size or truncated body, bad JSON.
    """
    header = await _read_until(reader, b"\r\n\r\n", "a header", "header block too long")
    if header is None:
        return None
    if len(header) > MAX_HEADER:
        raise ProtocolError("header block too long")
    length = parse_header(header[:-4])
    if length > max_body:
        raise ProtocolError(f"Content-Length {length} exceeds the {max_body}-byte limit")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError(f"stream ended inside a {length}-byte body") from None
    return decode_body(body)


async def read_line(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Next JSON-line object of the rank side, or None at end of stream."""
    line = await _read_until(reader, b"\n", "a line", f"control line longer than {MAX_LINE} bytes")
    if line is None:
        return None
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"control line is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("control line is not a JSON object")
    return obj


def line(obj: dict[str, Any]) -> bytes:
    """One control line."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class SyncChannel:
    """Blocking DAP framing over a socket (rank agent and the test client)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def read(self) -> dict[str, Any] | None:
        """Next message, or None at end of stream; ProtocolError on bad input."""
        while b"\r\n\r\n" not in self._buf:
            if len(self._buf) > MAX_HEADER:
                raise ProtocolError("header block too long")
            if not self._fill():
                if self._buf.strip():
                    raise ProtocolError("stream ended inside a header")
                return None
        header, _, rest = self._buf.partition(b"\r\n\r\n")
        length = parse_header(header)
        self._buf = rest
        while len(self._buf) < length:
            if not self._fill():
                raise ProtocolError(f"stream ended inside a {length}-byte body")
        body, self._buf = self._buf[:length], self._buf[length:]
        return decode_body(body)

    def read_line(self) -> dict[str, Any] | None:
        """Next JSON line, or None at end of stream."""
        while b"\n" not in self._buf:
            if len(self._buf) > MAX_LINE:
                raise ProtocolError("control line too long")
            if not self._fill():
                return None
        raw, _, self._buf = self._buf.partition(b"\n")
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(f"control line is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ProtocolError("control line is not a JSON object")
        return obj

    def take_buffer(self) -> bytes:
        """Bytes read past the last message (handed on when a stream becomes raw)."""
        data, self._buf = self._buf, b""
        return data

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def send_line(self, obj: dict[str, Any]) -> None:
        self.sock.sendall(line(obj))
