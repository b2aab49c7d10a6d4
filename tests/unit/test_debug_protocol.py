"""DAP framing and the attach configuration: bad input gets a clear ProtocolError."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from fi_dist.launchjson import ATTACH_CONFIG_NAME, attach_config, debugpy_config
from fi_dist.rundir import RunDir
from fi_dist.runtime.debug import launchjson
from fi_dist.runtime.debug.protocol import (
    MAX_MESSAGE,
    ProtocolError,
    SyncChannel,
    decode_body,
    encode,
    parse_header,
    read_message,
)


def _read_all(data: bytes) -> list:
    async def run() -> list:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        out = []
        while (msg := await read_message(reader)) is not None:
            out.append(msg)
        return out

    return asyncio.run(run())


def test_round_trip_of_several_frames() -> None:
    msgs = [{"seq": 1, "type": "request", "command": "initialize", "arguments": {"a": "é"}},
            {"seq": 2, "type": "event", "event": "output", "body": {"output": "x" * 70000}}]
    assert _read_all(b"".join(encode(m) for m in msgs)) == msgs


@pytest.mark.parametrize(("data", "match"), [
    (b"Content-Length: 99999999999\r\n\r\n{}", "exceeds"),
    (b"Content-Length: abc\r\n\r\n{}", "not a number"),
    (b"Content-Type: json\r\n\r\n{}", "no Content-Length"),
    (b"garbage-without-colon\r\n\r\n", "malformed header"),
    (b"Content-Length: 5\r\n\r\n{{{{{", "not JSON"),
    (b"Content-Length: 2\r\n\r\n[]", "not an object"),
    (b"Content-Length: 12\r\n\r\n{\"type\":\"x\"}", "request/response/event"),
    (b"Content-Length: 10\r\n\r\n{}", "ended inside"),
    (b"Content-Length: 2\r\n", "inside a header"),
])
def test_bad_frames_raise_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        _read_all(data)


def test_shape_checks() -> None:
    with pytest.raises(ProtocolError, match="command"):
        decode_body(b'{"seq": 1, "type": "request"}')
    with pytest.raises(ProtocolError, match="request_seq"):
        decode_body(b'{"seq": 1, "type": "response"}')
    with pytest.raises(ProtocolError, match="arguments"):
        decode_body(b'{"seq": 1, "type": "request", "command": "x", "arguments": 3}')
    assert parse_header(b"content-length: 12") == 12
    assert parse_header(b"Content-Length: %d" % MAX_MESSAGE) == MAX_MESSAGE


def test_sync_channel_reads_split_frames() -> None:
    a, b = socket.socketpair()
    with a, b:
        data = encode({"seq": 1, "type": "event", "event": "stopped"}) + b'{"x": 1}\n'
        for i in range(0, len(data), 7):
            a.sendall(data[i:i + 7])
        a.shutdown(socket.SHUT_WR)
        chan = SyncChannel(b)
        assert chan.read() == {"seq": 1, "type": "event", "event": "stopped"}
        assert chan.read_line() == {"x": 1}
        assert chan.read() is None


def test_launch_json_keeps_other_configurations(tmp_path: Path) -> None:
    vscode = tmp_path / ".vscode"
    vscode.mkdir()
    other = {"name": "mine", "type": "debugpy", "request": "launch"}
    (vscode / "launch.json").write_text(json.dumps({"version": "0.2.0", "configurations": [
        other, {"name": ATTACH_CONFIG_NAME, "old": True}]}))
    config = attach_config("127.0.0.1", 5999, "tok")
    launchjson.publish(config, tmp_path, tmp_path / "run", rank_port=6000)
    data = json.loads((vscode / "launch.json").read_text())
    assert data["configurations"] == [other, config, debugpy_config(config)]
    assert config == {"name": "fi-dist: attach all ranks", "type": "fi-dist",
                      "request": "attach", "connect": {"host": "127.0.0.1", "port": 5999},
                      "justMyCode": False, "fiDistToken": "tok"}
    assert RunDir(tmp_path / "run").debug_config() == config
