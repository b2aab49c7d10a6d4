"""DCP's local load plan, worked out while the shards stream.

DCP's default load planner needs no other rank: each rank turns the checkpoint's
metadata and its own state dict into reads (``create_default_local_load_plan``). But it
plans the whole state before the first read, and that is DTensor chunk arithmetic per
parameter and per optimizer state: ~3 ms for a 128 MiB state in 30 pieces, with the disk
idle. :class:`PlanAhead` runs the same function one key at a time on a helper thread, in
the order this rank's own files hold the keys, and the stream reads each piece as soon
as its key is planned.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from torch.distributed.checkpoint import LoadPlan, Metadata
from torch.distributed.checkpoint.default_planner import (
    DefaultLoadPlanner,
    create_default_local_load_plan,
)
from torch.distributed.checkpoint.planner import ReadItem


class PlanAhead:
    """A rank's reads, by state-dict key, as they are planned (or all known already)."""

    def __init__(self) -> None:
        self._items: dict[str, list[ReadItem]] = {}
        self._order: list[str] = []
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._finished = True
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, planner: DefaultLoadPlanner, first: Iterable[str]) -> PlanAhead:
        """The reads of ``planner`` (set up already).

        Planned beside the stream when the checkpoint holds exactly the keys of the
        planner's state; otherwise by DCP's planner, whole and at once: it names a key
        the checkpoint lacks, and maps the key names of checkpoints from older torch.

        Args:
            first: keys to plan first (the order this rank's own files hold them).
        """
        meta = planner.metadata
        if meta is not None and meta.state_dict_metadata.keys() == planner.state_dict.keys():
            return cls.start(planner.state_dict, meta, first)
        return cls.done(planner.create_local_plan())

    @classmethod
    def start(cls, state_dict: dict[str, Any], metadata: Metadata,
              first: Iterable[str]) -> PlanAhead:
        """Plan every key of the (flattened) ``state_dict`` on a helper thread.

        Args:
            state_dict: the load planner's flattened state dict; every key must be in
                ``metadata`` (else plan with DCP's planner, which names what is missing).
            metadata: the checkpoint's.
            first: keys to plan first (the order this rank's own files hold them).
        """
        plan = cls()
        plan._order = list(dict.fromkeys([*(k for k in first if k in state_dict), *state_dict]))
        plan._finished = False
        plan._thread = threading.Thread(target=plan._run, args=(state_dict, metadata),
                                        name="fi-dist-plan", daemon=True)
        plan._thread.start()
        return plan

    @classmethod
    def done(cls, plan: LoadPlan) -> PlanAhead:
        """A plan already worked out whole."""
        ahead = cls()
        for req in plan.items:
            ahead._items.setdefault(req.storage_index.fqn, []).append(req)
        ahead._order = list(ahead._items)
        return ahead

    def _run(self, state_dict: dict[str, Any], metadata: Metadata) -> None:
        try:
            for fqn in self._order:
                items = create_default_local_load_plan({fqn: state_dict[fqn]}, metadata).items
                with self._cond:
                    self._items[fqn] = items
                    self._cond.notify_all()
                # Hand the GIL to a stream waiting for this key now, not after the
                # interpreter's 5 ms switch interval: its read then runs beside the rest.
                time.sleep(0)
        except BaseException as exc:  # raised where the stream asks for a key
            with self._cond:
                self._error = exc
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def items(self, fqn: str) -> list[ReadItem]:
        """The reads of key ``fqn``, once planned ([] for a key no read is planned for).

        Raises:
            What planning raised (a size that differs, ...).
        """
        with self._cond:
            while fqn not in self._items:
                if self._error is not None:
                    raise self._error
                if self._finished:
                    return []
                self._cond.wait()
            return self._items[fqn]

    def all(self) -> list[ReadItem]:
        """Every read (waits for the planning to end).

        Raises:
            What planning raised.
        """
        self.close()
        if self._error is not None:
            raise self._error
        return [req for fqn in self._order for req in self._items.get(fqn, [])]

    def close(self) -> None:
        """Wait for the helper thread (planning is short: it is never abandoned)."""
        if self._thread is not None:
            self._thread.join()
