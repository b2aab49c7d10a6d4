"""Where the culler's warnings go: the log, a webhook (JSON POST), mail (SMTP).

A notifier that fails (server down, timeout) is logged and skipped: a broken webhook
must never keep a forgotten job holding its GPUs, nor stop the culler.
"""

from __future__ import annotations

import json
import logging
import smtplib
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from fi_dist.spec import IdleSpec

log = logging.getLogger("fi_dist.idle")


@dataclass(frozen=True)
class IdleEvent:
    """One notification about one node."""

    kind: str
    """warn, stop, resume or hung."""
    run_id: str
    node: int
    message: str
    idle_for: float = 0.0
    timeout: float = 0.0
    dry_run: bool = False
    hung: tuple[int, ...] = ()
    """Ranks reported hung (kind ``hung``)."""
    time: float = 0.0
    utilisation: list[float] = field(default_factory=list)
    diagnosis: str = ""
    """``hung``: the hang doctor's one line (which rank is behind, docs/hangs.md)."""
    stacks: str = ""
    """``hung``: every rank's stack, merged (what ``fi-dist stacks`` prints)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hung"] = list(self.hung)
        return data

    @property
    def subject(self) -> str:
        prefix = "[dry run] " if self.dry_run else ""
        return f"{prefix}fi-dist {self.run_id} node {self.node}: {self.kind}: {self.message}"


class Notifier(Protocol):
    name: str

    def send(self, event: IdleEvent) -> None:
        """Deliver ``event``; raise on failure (the caller logs it)."""
        ...


class LogNotifier:
    """One WARNING line per event (visible in the node agent's prefixed output)."""

    name = "log"

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log

    def send(self, event: IdleEvent) -> None:
        self.log.warning("fi-dist idle: %s", event.subject)


class WebhookNotifier:
    """HTTP POST of the event as a JSON body (Slack/Teams relays, alerting gateways)."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url
        self.timeout = timeout

    def send(self, event: IdleEvent) -> None:
        body = json.dumps(event.to_dict()).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            if resp.status >= 300:
                raise urllib.error.HTTPError(self.url, resp.status, resp.reason, resp.headers,
                                             None)


class EmailNotifier:
    """A plain-text mail per event through an SMTP relay (no auth: a cluster-local relay)."""

    name = "email"

    def __init__(self, host: str, port: int, sender: str, recipients: list[str],
                 timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.recipients = recipients
        self.timeout = timeout

    def send(self, event: IdleEvent) -> None:
        msg = EmailMessage()
        msg["Subject"] = event.subject
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(event.message + "\n\n" + json.dumps(event.to_dict(), indent=2))
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(msg)


def notifiers_from_spec(spec: IdleSpec) -> list[Notifier]:
    """The log notifier always; a webhook and mail when the spec names them."""
    out: list[Notifier] = [LogNotifier()]
    if spec.webhook:
        out.append(WebhookNotifier(spec.webhook))
    if spec.email:
        host, _, port = spec.smtp.rpartition(":")
        out.append(EmailNotifier(host, int(port), spec.email_from, list(spec.email)))
    return out


def notify_all(notifiers: Iterable[Notifier], event: IdleEvent) -> list[str]:
    """Send ``event`` through every notifier; returns the names of those that failed."""
    failed = []
    for n in notifiers:
        try:
            n.send(event)
        except (TimeoutError, OSError, smtplib.SMTPException, ValueError) as exc:
            failed.append(n.name)
            log.warning("fi-dist idle: %s notifier failed: %s: %s", n.name,
                        type(exc).__name__, exc)
    return failed
