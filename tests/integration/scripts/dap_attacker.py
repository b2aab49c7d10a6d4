"""Another user on the node, without the job token: try every port of a job as a debugger.

Run as ``python dap_attacker.py MARKER HOST:PORT ...`` (the tests run it as uid 65534).
On each port it opens DAP sessions that try initialize, attach (no token, a wrong
token), pydevd's own authorize with a guess, threads, pause, evaluate and
setExpression of code that would create MARKER, and a JSON-line hello like a rank's
agent. It prints one JSON object: per port, what each request got back. Standard
library only: it must run as any user, from any directory.
"""

from __future__ import annotations

import json
import socket
import sys

PAYLOAD = "__import__('pathlib').Path({marker!r}).write_text('pwned')"


def frame(msg: dict) -> bytes:
    body = json.dumps(msg).encode()
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def read_all(sock: socket.socket, wait: float) -> bytes:
    sock.settimeout(wait)
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
            if len(got) > 1 << 20:
                break
    except OSError:
        pass
    return got


class Conversation:
    """A minimal DAP client that waits for each answer (and events) like an IDE does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.seq = 0
        self.events: list[dict] = []

    def _next(self, wait: float) -> dict | None:
        self.sock.settimeout(wait)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        header, _, rest = self.buf.partition(b"\r\n\r\n")
        length = int(header.split(b":")[1])
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            rest += chunk
        self.buf = rest[length:]
        return json.loads(rest[:length])

    def request(self, command: str, arguments: dict | None = None, wait: float = 3.0) -> dict:
        self.seq += 1
        self.sock.sendall(frame({"seq": self.seq, "type": "request", "command": command,
                                 "arguments": arguments or {}}))
        try:
            while (msg := self._next(wait)) is not None:
                if msg.get("type") == "response" and msg.get("request_seq") == self.seq:
                    return {"success": msg.get("success"), "message": msg.get("message"),
                            "body": msg.get("body")}
                self.events.append(msg)
            return {"closed": True}
        except (OSError, ValueError, IndexError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def event(self, name: str, wait: float) -> dict | None:
        for ev in self.events:
            if ev.get("event") == name:
                return ev
        try:
            while (msg := self._next(wait)) is not None:
                if msg.get("event") == name:
                    return msg
        except (OSError, ValueError, IndexError):
            pass
        return None


def dap_session(host: str, port: int, marker: str, token: str | None) -> dict:
    code = PAYLOAD.format(marker=marker)
    out: dict = {}
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            c = Conversation(s)
            out["initialize"] = c.request("initialize", {"adapterID": "debugpy",
                                                         "clientID": "x"})
            out["authorize"] = c.request("pydevdAuthorize",
                                         {"debugServerAccessToken": "guess"})
            out["attach"] = c.request("attach", {"fiDistToken": token} if token else {})
            out["configurationDone"] = c.request("configurationDone")
            out["threads"] = c.request("threads")
            out["pause"] = c.request("pause", {"threadId": "*"})
            stopped = c.event("stopped", 5.0)
            out["evaluate"] = c.request("evaluate", {"expression": code, "context": "repl"})
            if stopped:
                tid = stopped.get("body", {}).get("threadId")
                trace = c.request("stackTrace", {"threadId": tid})
                frames = (trace.get("body") or {}).get("stackFrames") or [{}]
                out["evaluate_in_frame"] = c.request("evaluate", {
                    "expression": code, "frameId": frames[0].get("id"), "context": "repl"})
                out["continue"] = c.request("continue", {"threadId": tid})
    except OSError as exc:
        out["connect"] = f"{type(exc).__name__}: {exc}"
    return out


def line_session(host: str, port: int) -> str:
    hello = {"kind": "control", "rank": 0, "node": 0, "pid": 1, "token": "guess",
             "nonce": "0" * 32, "mac": "0" * 64}
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(json.dumps(hello).encode() + b"\n")
            s.sendall(json.dumps({"cmd": "open", "sid": 1}).encode() + b"\n")
            return read_all(s, 3.0).decode(errors="replace")
    except OSError as exc:
        return f"<{type(exc).__name__}: {exc}>"


def main() -> int:
    marker, *targets = sys.argv[1:]
    report = {}
    for target in targets:
        host, _, port = target.rpartition(":")
        report[target] = {
            "no_token": dap_session(host, int(port), marker, None),
            "wrong_token": dap_session(host, int(port), marker, "f" * 32),
            "line": line_session(host, int(port)),
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
