"""Progress of a long save or load: a line in the rank's output and a field in its rank file.

Nothing is reported for the first ``interval`` seconds, so the many short saves of a
typical job stay silent; after that at most one line per ``interval``, and a closing
line. The same figures go to the rank's heartbeat file as ``checkpoint`` (read by
``fi-dist status``)::

    {"op": "save", "step": 40, "bytes": 536870912, "total": 1073741824,
     "mib_s": 1403.2, "done": false, "time": 1795980478.1}
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fi_dist.runtime import heartbeat

MiB = float(1 << 20)
VERBS = {"save": ("saving", "saved"), "load": ("loading", "loaded")}


class Meter:
    """Counts the bytes of one operation; thread-safe (parallel writers share one)."""

    def __init__(self, op: str, step: int, total: int, rank: int, interval: float = 1.0,
                 out: Callable[[str], None] | None = None,
                 beat: heartbeat.Heartbeat | None = None) -> None:
        self.op = op
        self.step = step
        self.total = total
        self.rank = rank
        self.interval = interval
        self.done = 0
        self.reported = False
        self._out = out or (lambda line: print(line, flush=True))
        self._beat = beat
        self._t0 = time.monotonic()
        self._last = self._t0
        self._lock = threading.Lock()

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            now = time.monotonic()
            if now - self._last < self.interval:
                return
            self._last = now
            self.reported = True
            line, fields = self._figures(now, final=False)
        self._report(line, fields)

    def finish(self) -> None:
        """The closing line, when the operation was long enough to have reported."""
        with self._lock:
            if not self.reported:
                return
            line, fields = self._figures(time.monotonic(), final=True)
        self._report(line, fields)

    def _figures(self, now: float, final: bool) -> tuple[str, dict[str, Any]]:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.done / MiB / elapsed
        doing, did = VERBS.get(self.op, (self.op, self.op))
        head = f"fi-dist: rank {self.rank}: checkpoint step {self.step}:"
        if final:
            line = f"{head} {did} {self.done / MiB:.0f} MiB in {elapsed:.1f} s, {rate:.0f} MiB/s"
        else:
            line = (f"{head} {doing} {self.done / MiB:.0f}/{self.total / MiB:.0f} MiB, "
                    f"{rate:.0f} MiB/s")
        fields = {"op": self.op, "step": self.step, "bytes": self.done, "total": self.total,
                  "mib_s": round(rate, 1), "done": final, "time": time.time()}
        return line, fields

    def _report(self, line: str, fields: dict[str, Any]) -> None:
        self._out(line)
        beat = self._beat or heartbeat.current()
        beat.checkpoint(fields, final=bool(fields["done"]))
