"""Collective bookkeeping: a thin wrapper around ``torch.distributed``'s collectives.

Installed by ``rank_main`` before the script runs (:func:`install`). Per process group
it counts the collectives this rank issued and completed, and keeps the op and the
call site (the first frame outside torch and fi-dist) of the last one in the rank's
:class:`~fi_dist.hang.ledger.Ledger`. Sequence numbers are per group and start at 1,
so ranks of one group number the same collective alike: ``all_reduce #412``.

What it costs: about 2-3 µs per collective call (two stores into a memory map, a
frame walk of a few steps, cached per code object); no system call, no lock shared
with another process. What it sees: calls through ``torch.distributed``'s Python API
(``dist.all_reduce(...)``, also FSDP2's and DCP's). It does not see collectives issued
from C++ (DDP's gradient all-reduce): those are in torch's Flight Recorder, which the
dump thread copies into the same ledger. A collective called from inside another
(``all_gather_object`` -> ``all_gather``) counts once, as the outer one. With
``async_op=True`` a collective completes when its ``Work.wait()`` returns.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
from types import CodeType, FrameType
from typing import Any

from fi_dist.hang.ledger import Ledger

COLLECTIVES = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
               "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
               "gather", "scatter", "barrier", "monitored_barrier", "all_gather_object",
               "gather_object", "broadcast_object_list", "scatter_object_list")
"""The torch.distributed functions wrapped (point-to-point send/recv are not collectives)."""

_INTERNAL = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))),)
"""Frames under these directories are never a call site (fi_dist/runtime)."""


class _Group:
    """One process group's slot and counters (the rank's own view)."""

    __slots__ = ("completed", "issued", "off")

    def __init__(self, off: int) -> None:
        self.off = off
        self.issued = 0
        self.completed = 0


class CollectiveLedger:
    """Counts collectives per process group into a :class:`Ledger`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._groups: dict[str, _Group] = {}
        self._local = threading.local()
        self._sites: dict[CodeType, tuple[bytes, bytes] | None] = {}
        self._ops: dict[str, bytes] = {}
        self._pending: dict[int, tuple[_Group, int]] = {}
        self._lock = threading.Lock()
        self._torch_dirs: tuple[str, ...] = ()
        self.track_async = False
        """Async collectives complete at ``Work.wait()`` (else when they are issued)."""

    # --- who and where ----------------------------------------------------------------
    def _group(self, group: Any) -> _Group:
        name = "default" if group is None else (getattr(group, "group_name", None) or
                                                f"group@{id(group):x}")
        g = self._groups.get(name)
        if g is None:
            g = self._groups[name] = _Group(self.ledger.slot(name))
        return g

    def _site(self) -> tuple[bytes, int, bytes]:
        """The innermost frame outside torch and fi-dist: the user's call site."""
        f: FrameType | None = sys._getframe(2)
        sites = self._sites
        while f is not None:
            code = f.f_code
            try:
                site = sites[code]
            except KeyError:
                path = code.co_filename
                internal = path.startswith(self._torch_dirs) or path.startswith(_INTERNAL)
                site = sites[code] = None if internal else (
                    path.encode(errors="replace")[-160:], code.co_name.encode(errors="replace")[:64])
            if site is not None:
                return site[0], f.f_lineno, site[1]
            f = f.f_back
        return b"", 0, b""

    # --- the wrapper --------------------------------------------------------------------
    def wrap(self, name: str, fn: Any) -> Any:
        """``fn`` with bookkeeping; ``fn``'s signature locates ``group`` and ``async_op``."""
        params = list(inspect.signature(fn).parameters)
        gi = params.index("group") if "group" in params else -1
        ai = params.index("async_op") if "async_op" in params else -1
        op = name.encode()
        local = self._local
        ledger = self.ledger

        site = self._site
        group_of = self._group

        def collective(*args: Any, **kwargs: Any) -> Any:
            if getattr(local, "depth", 0):  # inside another collective: counted as that one
                return fn(*args, **kwargs)
            g = group_of(kwargs.get("group") if gi < 0 or len(args) <= gi else args[gi])
            seq = g.issued = g.issued + 1
            file, line, func = site()
            ledger.issue(g.off, seq, g.completed, op, file, line, func)
            local.depth = 1
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                ledger.fail(g.off, f"{type(exc).__name__}: {exc}")
                raise
            finally:
                local.depth = 0
            if result is not None and (kwargs.get("async_op") if ai < 0 or len(args) <= ai
                                       else args[ai]):
                self._track(result, g, seq)
            elif seq > g.completed:
                g.completed = seq
                ledger.complete(g.off, seq)
            return result

        collective.__name__ = getattr(fn, "__name__", name)
        collective.__qualname__ = getattr(fn, "__qualname__", name)
        collective.__doc__ = fn.__doc__
        collective.__wrapped__ = fn  # type: ignore[attr-defined]
        return collective

    def _track(self, work: Any, g: _Group, seq: int) -> None:
        """An async collective: it completes when its ``Work.wait()`` returns."""
        if not self.track_async and not _wrap_wait(self):  # patched on first use only
            self._done(g, seq)  # a torch whose Work refuses it: complete at issue
            return
        with self._lock:
            if len(self._pending) > 4096:  # never waited for: forget the oldest
                self._pending.pop(next(iter(self._pending)))
            self._pending[id(work)] = (g, seq)

    def _done(self, g: _Group, seq: int) -> None:
        if seq > g.completed:
            g.completed = seq
            self.ledger.complete(g.off, seq)

    def waited(self, work: Any) -> None:
        """An async collective's ``Work.wait()`` returned."""
        if not self._pending:  # a synchronous collective's own wait()
            return
        with self._lock:
            entry = self._pending.pop(id(work), None)
        if entry is not None:
            self._done(*entry)

    def failed_wait(self, work: Any, exc: BaseException) -> None:
        with self._lock:
            entry = self._pending.pop(id(work), None)
        if entry is not None:
            self.ledger.fail(entry[0].off, f"{type(exc).__name__}: {exc}")


_installed: CollectiveLedger | None = None
_originals: list[tuple[Any, str, Any]] = []
"""(object, attribute, original) for :func:`uninstall`."""


def _replace(obj: Any, name: str, value: Any) -> None:
    _originals.append((obj, name, getattr(obj, name)))
    setattr(obj, name, value)


def install(ledger: Ledger) -> CollectiveLedger | None:
    """Wrap torch.distributed's collectives (once per process); None without torch."""
    global _installed
    if _installed is not None:
        return _installed
    try:
        import torch
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d
    except ImportError:
        return None
    if not dist.is_available():
        return None
    book = CollectiveLedger(ledger)
    book._torch_dirs = (os.path.dirname(torch.__file__) + os.sep,)
    for name in COLLECTIVES:
        fn = getattr(c10d, name, None)
        if fn is None:
            continue
        wrapped = book.wrap(name, fn)
        # Both names: scripts call dist.X, torch's own code (and nested calls) c10d.X.
        _replace(c10d, name, wrapped)
        if getattr(dist, name, None) is fn:
            _replace(dist, name, wrapped)
    _wrap_init(dist, c10d, ledger)
    _installed = book
    return book


def _wrap_init(dist: Any, c10d: Any, ledger: Ledger) -> None:
    init = c10d.init_process_group

    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        result = init(*args, **kwargs)
        ledger.initialised()  # progress: the hang watch's clock restarts
        return result

    init_process_group.__wrapped__ = init  # type: ignore[attr-defined]
    init_process_group.__doc__ = init.__doc__
    _replace(c10d, "init_process_group", init_process_group)
    if getattr(dist, "init_process_group", None) is init:
        _replace(dist, "init_process_group", init_process_group)


def _wrap_wait(book: CollectiveLedger) -> bool:
    """Route ``Work.wait()`` through the ledger (async collectives complete there).

    Done at the first async collective only: a job that issues none keeps torch's own
    ``wait`` (synchronous collectives call it too). False when torch refuses the patch.
    """
    try:
        from torch._C._distributed_c10d import Work
    except ImportError:
        return False
    wait = Work.wait

    def tracked_wait(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = wait(self, *args, **kwargs)
        except BaseException as exc:
            book.failed_wait(self, exc)
            raise
        book.waited(self)
        return result

    try:
        _replace(Work, "wait", tracked_wait)
    except (TypeError, AttributeError):
        return False
    book.track_async = True
    return True


def uninstall() -> None:
    """Put torch.distributed back as it was (tests; a rank never needs it)."""
    global _installed
    while _originals:
        obj, name, value = _originals.pop()
        setattr(obj, name, value)
    _installed = None
