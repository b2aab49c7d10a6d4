"""DCP's storage layer for fi-dist: shard files of raw tensor bytes, hashed as they are written.

torch.distributed.checkpoint (DCP) plans who saves and loads which piece of a sharded
state; where the bytes go is a pluggable ``StorageWriter`` / ``StorageReader``. DCP's own
file system writer ``torch.save``s every piece into its file (a zip archive per tensor,
CRC32 included) and its reader ``torch.load``s each piece back and copies it again: 1.3x
a raw write and three copies per load here. This layer:

* writes each rank's pieces into ``__<rank>_<n>.distcp`` files (``n`` < ``threads``,
  balanced by size, written at once), each piece's bytes straight from its tensor at a
  64-byte aligned offset, through the same hashing, writeback-hinting stream as tensor
  files; ``.metadata`` is DCP's pickled plan whose ``storage_data`` per piece is a plain
  tuple ``(file, offset, length, dtype, shape)``;
* streams each rank's own files straight into the live shards, checksummed on the way
  (a load costs what a plain read of the same files costs); a damaged file fails the
  load on every rank alike (see :class:`ShardReader`).

Format-1 checkpoints (DCP's own files) are loaded by DCP's own reader.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch.distributed.checkpoint import (
    LoadPlan,
    LoadPlanner,
    Metadata,
    SavePlan,
    SavePlanner,
    StorageReader,
    StorageWriter,
)
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, ReadItem, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from fi_dist.runtime.checkpoint import layout, tensorfile
from fi_dist.runtime.checkpoint.dcp_plan import PlanAhead
from fi_dist.runtime.checkpoint.hashing import HashingReader, HashingWriter
from fi_dist.runtime.checkpoint.storage import Storage

METADATA = ".metadata"
ALIGN = 64


def _item_bytes(item: WriteItem) -> int:
    if item.type == WriteItemType.BYTE_IO or item.tensor_data is None:
        return 0
    n = 1
    for s in item.tensor_data.size:
        n *= s
    return n * torch.empty((), dtype=item.tensor_data.properties.dtype).element_size()


def _buckets(items: list[WriteItem], n: int) -> list[list[WriteItem]]:
    """Split ``items`` into at most ``n`` lists of about equal bytes (largest first)."""
    out: list[list[WriteItem]] = [[] for _ in range(max(1, n))]
    sizes = [0] * len(out)
    for item in sorted(items, key=_item_bytes, reverse=True):
        i = sizes.index(min(sizes))
        out[i].append(item)
        sizes[i] += _item_bytes(item)
    return [b for b in out if b]


class ShardWriter(StorageWriter):
    """Writes one DCP save into ``path`` (a directory on ``storage``).

    After ``dcp.save`` returns, :attr:`entries` holds the manifest entry of every file
    this rank wrote (base name -> entry).
    """

    def __init__(self, storage: Storage, path: str, threads: int = 1) -> None:
        super().__init__()
        self.storage = storage
        self.path = path
        self.threads = max(1, threads)
        self.entries: dict[str, layout.FileEntry] = {}
        self.is_coordinator = False

    def reset(self, checkpoint_id: Any = None) -> None:
        self.entries = {}

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.is_coordinator = is_coordinator

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        self.storage.makedirs(self.path)
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [dataclasses.replace(p, storage_data=f"__{i}_") for i, p in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        prefix = str(plan.storage_data)
        buckets = _buckets(list(plan.items), self.threads)

        def write_bucket(job: tuple[int, list[WriteItem]]) -> list[WriteResult]:
            n, items = job
            name = f"{prefix}{n}.distcp"
            results = []
            with self.storage.open_write(f"{self.path}/{name}") as w:
                for item in items:
                    w.write(bytes(-w.tell() % ALIGN))
                    results.append(_write_item(w, name, item, planner.resolve_data(item)))
            self.entries[name] = layout.FileEntry(w.size, w.hexdigest)
            return results

        jobs = list(enumerate(buckets))
        if len(jobs) > 1:
            with ThreadPoolExecutor(len(jobs), thread_name_prefix="fi-dist-dcp") as pool:
                parts = list(pool.map(write_bucket, jobs))
        else:
            parts = [write_bucket(j) for j in jobs]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result([r for part in parts for r in part])
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.storage_data = {r.index: r.storage_data for part in results for r in part}
        with self.storage.open_write(f"{self.path}/{METADATA}") as w:
            pickle.dump(metadata, w)
        self.entries[METADATA] = layout.FileEntry(w.size, w.hexdigest)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False  # never picked by DCP on its own: fi-dist passes it explicitly

    def storage_meta(self) -> Any:
        return None


def _write_item(w: HashingWriter, name: str, item: WriteItem, data: Any) -> WriteResult:
    offset = w.tell()
    if item.type == WriteItemType.BYTE_IO:
        w.write(data.getbuffer())
        info: tuple[Any, ...] = (name, offset, w.tell() - offset, None, None)
    else:
        t = data.detach()
        if t.dtype not in tensorfile.DTYPES:
            raise TypeError(f"{item.index.fqn}: dtype {t.dtype} has no raw form in shard files")
        w.write(tensorfile.tensor_bytes(t))
        info = (name, offset, w.tell() - offset, tensorfile.DTYPES[t.dtype], list(t.shape))
    return WriteResult(index=item.index, size_in_bytes=info[2], storage_data=info)


class ShardReader(StorageReader):
    """Reads a format-2 DCP save, streaming this rank's own files into the live shards.

    Each file this rank owns is read once, front to back, with large reads that land
    directly in the target shards (one copy, as a plain read), hashed on the way and
    checked against the manifest at its end; a mismatch raises inside ``read_data``,
    which DCP reports on every rank alike, so the ranks still move on together. Pieces
    a rank needs from a file another rank owns (a replicated value DCP saved once) are
    read as byte ranges: that file's owner verifies all of it in the same load.
    :meth:`load` (fi-dist's resume) reads while the plan is being worked out;
    ``read_data`` (DCP's interface) takes a finished one.

    Args:
        storage: where the files are.
        path: the save's directory.
        entries: base name -> manifest entry of every file of the save.
        mine: the files this rank streams and verifies.
        metadata: the ``.metadata`` bytes, already read and verified.
        on_bytes: progress callback (bytes streamed).
    """

    def __init__(self, storage: Storage, path: str, entries: dict[str, layout.FileEntry],
                 mine: set[str], metadata: bytes, on_bytes: Any = None) -> None:
        super().__init__()
        self.storage = storage
        self.path = path
        self.entries = entries
        self.mine = mine
        self.metadata_bytes = metadata
        self.on_bytes = on_bytes
        self.storage_data: dict[Any, Any] = {}
        self._pieces: dict[str, list[MetadataIndex]] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return pickle.loads(self.metadata_bytes)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data
        self._pieces = {}
        for index, (name, *_) in sorted(metadata.storage_data.items(),
                                          key=lambda kv: kv[1][1]):
            self._pieces.setdefault(name, []).append(index)

    def own_keys(self) -> list[str]:
        """The state-dict keys of this rank's own files, in the order the bytes lie."""
        return [index.fqn for name in sorted(self.mine) for index in self._pieces.get(name, [])]

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        self.read_planned(PlanAhead.done(plan), planner)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def load(self, state_dict: dict[str, Any], is_coordinator: bool) -> None:
        """Plan with DCP's default load planner and stream ``state_dict``'s pieces into it
        (no collective: that planner needs no other rank)."""
        planner = DefaultLoadPlanner()
        meta = self.read_metadata()
        planner.set_up_planner(state_dict, meta, is_coordinator)
        self.set_up_storage_reader(meta, is_coordinator)
        # The default planner's global step and finish, and this reader's plan hooks,
        # change nothing: the local plan is the plan.
        plan = PlanAhead.of(planner, self.own_keys())
        try:
            self.read_planned(plan, planner)
        finally:
            plan.close()

    def read_planned(self, plan: PlanAhead, planner: LoadPlanner) -> None:
        """Stream this rank's own files, each piece as soon as ``plan`` has its reads; then
        read the pieces this rank needs from other ranks' files."""
        for name in sorted(self.mine):
            self._stream(name, self._in_order(name, plan), planner)
        elsewhere: dict[str, list[ReadItem]] = {}
        for req in plan.all():
            name = self.storage_data[req.storage_index][0]
            if name not in self.mine:
                elsewhere.setdefault(name, []).append(req)
        for name in sorted(elsewhere):
            for req in sorted(elsewhere[name], key=lambda r: self.storage_data[r.storage_index][1]):
                self._serve(req, planner, self._range(name, req))

    def _in_order(self, name: str, plan: PlanAhead) -> Iterator[ReadItem]:
        for index in self._pieces.get(name, []):
            for req in plan.items(index.fqn):
                if req.storage_index == index:
                    yield req

    def _stream(self, name: str, reqs: Iterable[ReadItem], planner: LoadPlanner) -> None:
        path, entry = f"{self.path}/{name}", self.entries[name]
        late: list[ReadItem] = []
        pickled: list[tuple[ReadItem, bytes]] = []
        try:
            with self.storage.open_read(path) as f:
                r = HashingReader(f, entry.algo, self.on_bytes)
                try:
                    for req in reqs:
                        offset, length = self.storage_data[req.storage_index][1:3]
                        if offset < r.size:  # a piece read twice (resharding): see below
                            late.append(req)
                            continue
                        r.skip(offset - r.size)  # alignment padding, pieces for others
                        if req.type == LoadItemType.BYTE_IO:
                            # Decoded only once the whole file checked out.
                            pickled.append((req, r.read_exact(length)))
                        else:  # raw bytes into the target: nothing is interpreted yet
                            self._serve(req, planner, None, r)
                    r.drain()
                    eof = r.at_eof()
                finally:
                    digest = r.hexdigest()
        except FileNotFoundError:
            raise layout.CheckpointCorruptError(f"{path}: missing") from None
        except EOFError:
            raise layout.CheckpointCorruptError(f"{path}: shorter than its manifest entry") from None
        layout.check(entry, r.size if eof else r.size + 1, digest, path)
        for req, data in pickled:
            planner.load_bytes(req, io.BytesIO(data))
        for req in late:  # the file is verified now
            self._serve(req, planner, self._range(name, req))

    def _range(self, name: str, req: ReadItem) -> torch.Tensor:
        _, offset, length, _, _ = self.storage_data[req.storage_index]
        if name not in self.entries or offset + length > self.entries[name].size:
            raise layout.CheckpointCorruptError(
                f"{self.path}/{name}: no bytes {offset}..{offset + length} in the manifest")
        out = torch.empty(length, dtype=torch.uint8)
        with self.storage.open_read(f"{self.path}/{name}") as f:
            f.seek(offset)
            if f.readinto(out.numpy()) != length:  # type: ignore[attr-defined]
                raise layout.CheckpointCorruptError(f"{self.path}/{name}: shorter than its "
                                                    "manifest entry")
        return out

    def _serve(self, req: ReadItem, planner: LoadPlanner, raw: torch.Tensor | None,
               r: HashingReader | None = None) -> None:
        """Hand one piece to DCP: from ``raw`` bytes, or read from ``r`` (into the target
        itself when the piece is whole and the target a plain CPU tensor)."""
        _, _, length, dtype_name, shape = self.storage_data[req.storage_index]
        if req.type == LoadItemType.BYTE_IO:  # only from a range read (see _stream)
            planner.load_bytes(req, io.BytesIO(raw.numpy().tobytes()))  # type: ignore[union-attr]
            return
        dtype = tensorfile.BY_NAME[dtype_name]
        target = planner.resolve_tensor(req).detach()
        whole = (all(o == 0 for o in req.storage_offsets)
                 and list(req.lengths) == list(shape) == list(target.shape))
        if (r is not None and whole and target.device.type == "cpu" and target.dtype == dtype
                and target.is_contiguous()):
            if r.readinto(target.reshape(-1).view(torch.uint8).numpy()) != length:
                raise EOFError
            planner.commit_tensor(req, target)
            return
        if r is not None:
            raw = torch.empty(length, dtype=torch.uint8)
            if r.readinto(raw.numpy()) != length:
                raise EOFError
        src = raw.view(dtype).reshape(shape)  # type: ignore[union-attr]
        for dim, (start, n) in enumerate(zip(req.storage_offsets, req.lengths, strict=True)):
            if start != 0 or n != src.size(dim):
                src = src.narrow(dim, start, n)
        if target.size() != src.size():
            raise layout.CheckpointError(f"{req.storage_index.fqn}: stored piece "
                                         f"{tuple(src.size())} != target {tuple(target.size())}")
        target.copy_(src)
        planner.commit_tensor(req, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False

