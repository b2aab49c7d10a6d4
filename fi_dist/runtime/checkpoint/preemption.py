"""Preemption notice: a signal on ANY rank becomes one decision every rank agrees on.

Three layers, each doing the least it can:

1. The signal handler only records the signal number and the time (no I/O, no
   collectives: it runs between two bytecodes of whatever the loop was doing).
2. A watcher thread publishes a local notice to the job's c10d store at once and
   polls the store for a notice from another rank. So every rank learns of a SIGTERM
   anywhere within ``poll`` seconds, with the time of the FIRST signal, even while a
   long step keeps it away from the next step boundary (the deadline counts from
   that first signal, not from when each rank happens to look).
3. At each step boundary :meth:`PreemptionMonitor.agree` runs one tiny all_reduce
   (MAX of the flag, MIN of the signal time): all ranks leave it with the same answer,
   so all save the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

log = logging.getLogger("fi_dist.checkpoint")

STORE_KEY = "preempt"


def parse_signals(signals: tuple[str | int | signal.Signals, ...] | list[Any]) -> list[signal.Signals]:
    """Signal names or numbers -> Signals.

    Raises:
        ValueError: naming the entry that is not a catchable signal.
    """
    out: list[signal.Signals] = []
    for s in signals:
        try:
            if isinstance(s, str):
                name = s.upper() if s.upper().startswith("SIG") else "SIG" + s.upper()
                sig = signal.Signals[name]
            else:
                sig = signal.Signals(int(s))
        except (KeyError, ValueError):
            raise ValueError(f"signals: {s!r} is not a signal name or number") from None
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ValueError(f"signals: {sig.name} cannot be caught")
        out.append(sig)
    if not out:
        raise ValueError("signals: at least one signal is needed")
    return out


class PreemptionMonitor:
    """Turns a preemption signal on any rank into an agreed stop."""

    def __init__(self, signals: list[signal.Signals], rank: int = 0, store: Any = None,
                 poll: float = 0.05) -> None:
        self.signals = signals
        self.rank = rank
        self.store = store
        self.poll = poll
        self.signum: int | None = None
        self.signal_time: float | None = None
        self.remote: str | None = None
        """The notice another rank published (``rank:SIGNAME:time``), when one did."""
        self.remote_time: float | None = None
        self._old: dict[int, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published = False

    # --- layer 1: the handler ---------------------------------------------------
    def _handler(self, signum: int, _frame: object) -> None:
        if self.signum is None:
            self.signal_time = time.time()
        self.signum = signum

    def install(self) -> None:
        """Take over the signals (main thread only) and start the store watcher."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("Checkpointer must be created on the main thread "
                               "(signal handlers can only be installed there)")
        for sig in self.signals:
            self._old[sig] = signal.signal(sig, self._handler)
        if self.store is not None and self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="fi-dist-preempt",
                                            daemon=True)
            self._thread.start()

    def uninstall(self, restore_signals: bool = True) -> None:
        self._stop.set()
        if restore_signals and threading.current_thread() is threading.main_thread():
            for sig, old in self._old.items():
                signal.signal(sig, old)
        self._old.clear()

    # --- layer 2: the store side channel -----------------------------------------
    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._poll_once()
            except Exception as exc:  # the store going away at job end is normal
                log.debug("rank %d: preemption watcher poll failed: %s", self.rank, exc)

    def _poll_once(self) -> None:
        if self.signum is not None and not self._published:
            name = signal.Signals(self.signum).name
            # compare_set keeps the FIRST notice: its time is the job's deadline base.
            self.store.compare_set(STORE_KEY, "", f"{self.rank}:{name}:{self.signal_time}")
            self._published = True
        if self.remote is None and self.store.check([STORE_KEY]):
            value = self.store.get(STORE_KEY).decode()
            self.remote = value
            try:
                self.remote_time = float(value.rsplit(":", 1)[1])
            except (IndexError, ValueError):
                self.remote_time = time.time()

    # --- layer 3: agreement --------------------------------------------------------
    @property
    def requested(self) -> bool:
        """This rank knows of a preemption (its own signal or another rank's notice)."""
        return self.signum is not None or self.remote is not None

    def first_time(self) -> float | None:
        times = [t for t in (self.signal_time, self.remote_time) if t is not None]
        return min(times) if times else None

    def agree(self, group: Any = None) -> tuple[bool, float | None]:
        """Collective over ``group``: (does any rank know of a preemption, first signal time)."""
        import torch
        import torch.distributed as dist

        first = self.first_time()
        if not (dist.is_available() and dist.is_initialized()):
            return self.requested, first
        # One all_reduce carries both answers: MAX(flag) and MAX(-time) = -MIN(time).
        t = torch.tensor([1.0 if self.requested else 0.0,
                          -(first if first is not None else float("inf"))], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        agreed = bool(t[0].item() > 0)
        when = -float(t[1].item())
        return agreed, (when if when != float("inf") else None)
