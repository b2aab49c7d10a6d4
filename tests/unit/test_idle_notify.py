"""Notifiers against real servers on loopback: http.server (webhook), aiosmtpd (mail)."""

from __future__ import annotations

import json
import logging
import socket
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from aiosmtpd.controller import Controller

from fi_dist.runtime.idle.notify import (
    EmailNotifier,
    IdleEvent,
    LogNotifier,
    WebhookNotifier,
    notifiers_from_spec,
    notify_all,
)
from fi_dist.spec import IdleSpec

EVENT = IdleEvent("warn", "run-1", 3, "idle for 1500s; ending in 300s", idle_for=1500.0,
                  timeout=1800.0, hung=(), time=1.0, utilisation=[0.0, 1.0])


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(self.server.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    server.received = []
    server.status = 204
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def smtp_server():
    inbox = _Inbox()
    ctl = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    ctl.start()
    yield ctl, inbox
    ctl.stop()


def test_webhook_posts_the_event_as_json(webhook_server):
    url = f"http://127.0.0.1:{webhook_server.server_port}/hook"
    WebhookNotifier(url).send(EVENT)
    [(ctype, body)] = webhook_server.received
    assert ctype == "application/json"
    assert body["kind"] == "warn" and body["node"] == 3 and body["run_id"] == "run-1"
    assert body["idle_for"] == 1500.0 and body["utilisation"] == [0.0, 1.0]


def test_email_goes_through_a_real_smtp_server(smtp_server):
    ctl, inbox = smtp_server
    EmailNotifier("127.0.0.1", ctl.port, "culler@example.org",
                  ["a@example.org", "b@example.org"]).send(EVENT)
    [(sender, rcpts, raw)] = inbox.messages
    assert sender == "culler@example.org"
    assert rcpts == ["a@example.org", "b@example.org"]
    msg = message_from_bytes(raw)
    assert msg["Subject"] == "fi-dist run-1 node 3: warn: idle for 1500s; ending in 300s"
    text = msg.get_payload(decode=True).decode().replace("\r\n", "\n")
    assert json.loads(text.split("\n\n", 1)[1])["timeout"] == 1800.0


def test_spec_builds_every_notifier_and_all_deliver(webhook_server, smtp_server, caplog):
    ctl, inbox = smtp_server
    spec = IdleSpec(enabled=True, webhook=f"http://127.0.0.1:{webhook_server.server_port}/",
                    email="ops@example.org", smtp=f"127.0.0.1:{ctl.port}")
    notifiers = notifiers_from_spec(spec)
    assert [n.name for n in notifiers] == ["log", "webhook", "email"]
    with caplog.at_level(logging.WARNING, logger="fi_dist.idle"):
        assert notify_all(notifiers, EVENT) == []
    assert len(webhook_server.received) == 1 and len(inbox.messages) == 1
    assert any("node 3: warn" in r.getMessage() for r in caplog.records)


def test_a_failing_notifier_is_logged_and_the_others_still_deliver(webhook_server, caplog):
    webhook_server.status = 500
    dead = WebhookNotifier(f"http://127.0.0.1:{_free_port()}/")  # nothing listens
    refused = EmailNotifier("127.0.0.1", _free_port(), "x@y.z", ["a@b.c"], timeout=2)
    ok = WebhookNotifier(f"http://127.0.0.1:{webhook_server.server_port}/")
    server_error = WebhookNotifier(f"http://127.0.0.1:{webhook_server.server_port}/")
    server_error.name = "webhook-500"
    with caplog.at_level(logging.WARNING, logger="fi_dist.idle"):
        failed = notify_all([dead, refused, server_error, LogNotifier()], EVENT)
    assert failed == ["webhook", "email", "webhook-500"]
    webhook_server.status = 204
    assert notify_all([ok], EVENT) == []
    assert sum("notifier failed" in r.getMessage() for r in caplog.records) == 3
