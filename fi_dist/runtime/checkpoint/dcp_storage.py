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
* reads from file images a rank has already read and verified (see the loader), so a
  load is one disk read, checksummed on the way, and one copy into the live shards.

Format-1 checkpoints (DCP's own files) are loaded by DCP's own reader.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
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
from torch.distributed.checkpoint.planner import LoadItemType, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from fi_dist.runtime.checkpoint import layout, tensorfile
from fi_dist.runtime.checkpoint.hashing import HashingWriter
from fi_dist.runtime.checkpoint.sharded import read_image
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
    """Reads a format-2 DCP save from file images already read and verified.

    Args:
        storage: where the files are.
        path: the save's directory.
        images: base name -> the file's bytes (a uint8 tensor), for the files this rank
            read while verifying; any other file is read (and verified) when needed.
        entries: base name -> manifest entry, to verify what is read here.
    """

    def __init__(self, storage: Storage, path: str, images: dict[str, torch.Tensor],
                 entries: dict[str, layout.FileEntry]) -> None:
        super().__init__()
        self.storage = storage
        self.path = path
        self.images = dict(images)
        self.entries = entries
        self.storage_data: dict[Any, Any] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        pass

    def _image(self, name: str) -> torch.Tensor:
        if name not in self.images:
            self.images[name] = read_image(self.storage, f"{self.path}/{name}",
                                           self.entries[name])
        return self.images[name]

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        image = self._image(METADATA)
        return pickle.load(io.BytesIO(image.numpy().tobytes()))

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self.storage_data = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        for req in plan.items:
            name, offset, length, dtype, shape = self.storage_data[req.storage_index]
            raw = self._image(name)[offset:offset + length]
            if req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(req, io.BytesIO(raw.numpy().tobytes()))
                continue
            src = raw.view(tensorfile.BY_NAME[dtype]).reshape(shape)
            for dim, (start, n) in enumerate(zip(req.storage_offsets, req.lengths, strict=True)):
                if start != 0 or n != src.size(dim):
                    src = src.narrow(dim, start, n)
            target = planner.resolve_tensor(req).detach()
            if target.size() != src.size():
                raise layout.CheckpointError(f"{req.storage_index.fqn}: stored piece "
                                             f"{tuple(src.size())} != target {tuple(target.size())}")
            target.copy_(src)
            planner.commit_tensor(req, target)
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False
