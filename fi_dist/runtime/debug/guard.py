"""Limits on what a stranger can make the hub spend before proving the job token.

A debug port is reachable by every process on the node (hostNetwork pods, sidecars, a
shared dev box). Before a connection authenticates, the hub spends at most:

* :data:`PREAUTH_MESSAGE` bytes per message (a DAP body, a control line);
* :data:`AUTH_DEADLINE` seconds (a half-sent header is not a reason to wait forever);
* one of :data:`MAX_PENDING` slots. When all are taken, a newcomer takes the slot of the
  connection that has made least progress (no complete message yet, oldest first), so
  file descriptors and memory stay bounded whatever the flood, and a client that speaks
  at once (an IDE, a rank) still gets in while a flood of idle sockets is going on;
* a log line per second per kind of refusal, with a count of the others.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

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
    """One listener's connections that have not authenticated yet (at most ``limit``)."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        # key -> (close, progressed); insertion order is age.
        self._conns: dict[object, tuple[Callable[[], None], bool]] = {}

    @property
    def count(self) -> int:
        return len(self._conns)

    def admit(self, key: object, close: Callable[[], None]) -> bool:
        """Give ``key`` a slot; when all are taken, close the least useful holder.

        Returns True when someone was evicted to make room.
        """
        evicted = False
        if len(self._conns) >= self.limit:
            idle = [k for k, (_, progressed) in self._conns.items() if not progressed]
            victim = idle[0] if idle else next(iter(self._conns))
            closer, _ = self._conns.pop(victim)
            closer()
            evicted = True
        self._conns[key] = (close, False)
        return evicted

    def progress(self, key: object) -> None:
        """``key`` sent a complete message: it is evicted only after idle ones."""
        if key in self._conns:
            self._conns[key] = (self._conns[key][0], True)

    def release(self, key: object) -> None:
        """The connection authenticated or closed: its slot is free."""
        self._conns.pop(key, None)


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
