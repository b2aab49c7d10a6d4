"""Where checkpoint bytes go: a narrow layer over fsspec that takes ``str`` paths.

Local paths get what durability needs and fsspec does not do on its own: ``fsync`` of
every file and of the directory after a rename. Object stores (``s3://`` ...) have no
atomic directory rename; there a single PUT is atomic and the manifest, written last,
is the commit point (see :mod:`fi_dist.runtime.checkpoint.layout`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator
from typing import IO, Any

CHUNK = 8 << 20
PARALLEL_HASH_MIN = 1 << 20


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it.

    ``torch.save`` writes straight into it, so serialising, checksumming and writing
    are one pass over the bytes (no second read of a file we just wrote).
    """

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.size = 0
        self._h = hashlib.sha256()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if n >= PARALLEL_HASH_MIN:
            # hashlib and file writes both release the GIL on large buffers: hash on a
            # helper thread while this one writes, so checksums cost (almost) nothing.
            t = threading.Thread(target=self._h.update, args=(data,))
            t.start()
            self.f.write(data)
            t.join()
        else:
            self._h.update(data)
            self.f.write(data)
        self.size += n
        return n

    def flush(self) -> None:
        self.f.flush()

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()


class Storage:
    """A checkpoint root (local directory or fsspec URL) and the operations on it."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        import fsspec  # noqa: PLC0415  (fsspec is light, but keep module import cheap)

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
    def open_write(self, path: str) -> Iterator[HashingWriter]:
        """Open ``path`` for writing; on a clean exit the bytes are durable."""
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb", buffering=CHUNK) as f:
                w = HashingWriter(f)
                yield w
                f.flush()
                os.fsync(f.fileno())
        else:
            with self.fs.open(path, "wb") as f:
                w = HashingWriter(f)
                yield w

    def write_bytes(self, path: str, data: bytes) -> tuple[int, str]:
        """Write ``data`` durably; returns (size, sha256)."""
        with self.open_write(path) as w:
            w.write(data)
        return w.size, w.sha256

    def read_bytes(self, path: str) -> bytes:
        if self.local:
            with open(path, "rb") as f:
                return f.read()
        return self.fs.cat_file(path)

    def rm(self, path: str) -> None:
        """Remove a file or a whole directory tree; no error if it is gone."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def rename_dir(self, src: str, dst: str) -> None:
        """Atomically move directory ``src`` to ``dst`` (local only) and make it durable."""
        if not self.local:
            raise NotImplementedError(f"{self.protocol}:// has no atomic rename")
        # Every file was fsync'd when written; the directory entries need it too.
        _fsync_path(src)
        os.rename(src, dst)
        _fsync_path(os.path.dirname(dst))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
