"""Limits on what a stranger can make the hub spend before proving the job token.

A debug port is reachable by every process on the node (hostNetwork pods, sidecars, a
shared dev box). Before a connection authenticates, the hub spends at most:

* :data:`PREAUTH_MESSAGE` bytes per message (a DAP body, a control line);
* :data:`AUTH_DEADLINE` seconds (a half-sent header is not a reason to wait forever);
* one of :data:`MAX_PENDING` slots; a connection beyond them is closed at once, so file
  descriptors and memory stay bounded whatever the flood;
* a log line per second per kind of refusal, with a count of the others.
"""

from __future__ import annotations

import logging
import resource
import time

PREAUTH_MESSAGE = 64 * 1024
"""Largest message (DAP body or control line) before the token is proven."""
AUTH_DEADLINE = 10.0
"""Seconds a connection has to prove the token."""
MAX_PENDING = 64
"""Connections not yet authenticated, per listener; more are closed on accept."""


class Refusals:
    """Log refusals at most once a second per kind, with how many were folded in."""

    def __init__(self, log: logging.Logger, every: float = 1.0,
                 clock: object = time.monotonic) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def note(self, kind: str, detail: str) -> None:
        now = self.clock()  # type: ignore[operator]
        if now - self._last.get(kind, float("-inf")) < self.every:
            self._folded[kind] = self._folded.get(kind, 0) + 1
            return
        folded = self._folded.pop(kind, 0)
        self._last[kind] = now
        more = f" (and {folded} more like it since the last line)" if folded else ""
        self.log.warning("%s: %s%s", kind, detail, more)


class Pending:
    """Counts one listener's connections that have not authenticated yet."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self.count = 0

    def admit(self) -> bool:
        """Take a slot for a new connection; False when all are taken (close it)."""
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        """The connection authenticated or closed: its slot is free."""
        self.count = max(0, self.count - 1)


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit; returns the new one.

    Authenticated ranks and sessions need a few descriptors each; a flood never holds
    more than :data:`MAX_PENDING` per listener, so the limit is headroom, not a defence.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft
