"""Where checkpoint bytes go: a narrow layer over fsspec that takes ``str`` paths.

Local paths get what durability needs and fsspec does not do on its own: ``fsync`` of
every file and of the directory after a rename. Object stores (``s3://`` ...) have no
atomic directory rename; there a single PUT is atomic and the manifest, written last,
is the commit point (see :mod:`fi_dist.runtime.checkpoint.layout`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator
from typing import IO, Any

from fi_dist.runtime.checkpoint.hashing import XXH3_128, HashingWriter

READ_BUFFER = 1 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux / not glibc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def _writeback(fd: int, on_bytes: Callable[[int], None] | None) -> Callable[[int], None]:
    """A byte counter that asks the kernel to start writing each chunk to disk at once.

    Without it the kernel holds dirty pages until the final fsync, so the copy into the
    page cache and the disk write run one after the other; with it they overlap. It only
    *starts* writeback (no wait, no durability): the fsync at the end is still what
    makes the file durable. Where the call is missing it is skipped.
    """
    offset = 0

    def done(n: int) -> None:
        nonlocal offset
        if _sync_file_range is not None and n >= (1 << 20):
            _sync_file_range(fd, offset, n, _SYNC_FILE_RANGE_WRITE)
        offset += n
        if on_bytes is not None:
            on_bytes(n)

    return done


class Storage:
    """A checkpoint root (local directory or fsspec URL) and the operations on it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec

        if not url:
            raise ValueError("checkpoint dir must be a non-empty path or URL")
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.protocol = protocol
        self.local = protocol in ("file", "local")
        if self.local:
            self.root = os.path.abspath(self.root)

    @property
    def atomic_rename(self) -> bool:
        """Whether a directory rename is atomic (a local file system)."""
        return self.local

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts)])

    def makedirs(self, path: str) -> None:
        self.fs.makedirs(path, exist_ok=True)

    def listdir(self, path: str | None = None) -> list[str]:
        """Base names directly under ``path`` (the root by default); [] if it is absent."""
        path = path or self.root
        try:
            if not self.local:
                self.fs.invalidate_cache(path)
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def exists(self, path: str) -> bool:
        if not self.local:
            self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def size(self, path: str) -> int:
        return int(self.fs.size(path))

    @contextlib.contextmanager
    def open_write(self, path: str, algo: str = XXH3_128,
                   on_bytes: Callable[[int], None] | None = None,
                   durable: bool = True) -> Iterator[HashingWriter]:
        """Open ``path`` for writing, hashing as it goes.

        Args:
            durable: fsync before returning. With False the caller must call
                :meth:`sync_file` later (so it can overlap with other writes).
        """
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Unbuffered: HashingWriter gathers small writes itself and hands large
            # tensors to the kernel straight from their memory.
            with open(path, "wb", buffering=0) as f:
                w = HashingWriter(f, algo, _writeback(f.fileno(), on_bytes))
                try:
                    yield w
                finally:
                    w.close()
                if durable:
                    os.fsync(f.fileno())
        else:
            with self.fs.open(path, "wb") as f:
                w = HashingWriter(f, algo, on_bytes)
                try:
                    yield w
                finally:
                    w.close()

    def sync_file(self, path: str) -> None:
        """Make a file written with ``durable=False`` durable (local; a no-op elsewhere)."""
        if self.local:
            _fsync_path(path)

    def write_bytes(self, path: str, data: bytes, algo: str = XXH3_128) -> tuple[int, str]:
        """Write ``data`` durably; returns (size, checksum)."""
        with self.open_write(path, algo) as w:
            w.write(data)
        return w.size, w.hexdigest

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[IO[bytes]]:
        """Open ``path`` for large sequential reads.

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        if self.local:
            with open(path, "rb", buffering=READ_BUFFER) as f:
                with contextlib.suppress(AttributeError, OSError):
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                yield f
        else:
            with self.fs.open(path, "rb", block_size=8 << 20) as f:
                yield f

    def read_bytes(self, path: str) -> bytes:
        if self.local:
            with open(path, "rb") as f:
                return f.read()
        return self.fs.cat_file(path)

    def rm(self, path: str) -> None:
        """Remove a file or a whole directory tree; no error if it is gone."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def rename(self, src: str, dst: str) -> None:
        """Rename (local only); not made durable (see :meth:`rename_dir`)."""
        if not self.local:
            raise NotImplementedError(f"{self.protocol}:// has no atomic rename")
        os.rename(src, dst)

    def rename_dir(self, src: str, dst: str) -> None:
        """Atomically move directory ``src`` to ``dst`` (local only) and make it durable."""
        if not self.local:
            raise NotImplementedError(f"{self.protocol}:// has no atomic rename")
        # Every file was fsync'd when written; the directory entries need it too
        # (subdirectories included: DCP's shards live in dcp/).
        for sub, _, _ in os.walk(src):
            _fsync_path(sub)
        os.rename(src, dst)
        _fsync_path(os.path.dirname(dst))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
