"""What a committed checkpoint looks like on storage, and how to tell a complete one.

::

    <dir>/step-0000000040/manifest.json     written LAST, by the coordinator (rank 0)
    <dir>/step-0000000040/model.safetensors       replicated state, written once (rank 0)
    <dir>/step-0000000040/optimizer.safetensors   ... scheduler.safetensors
    <dir>/step-0000000040/rank-00003.safetensors  per-rank RNG states and data position
    <dir>/step-0000000040/dcp/...           sharded state (torch.distributed.checkpoint)
    <dir>/.tmp-step-0000000040-<nonce>/     a save in progress (local file systems)

A directory counts as a checkpoint only when its manifest parses, carries a matching
self-checksum and every file it lists exists with the listed size. Contents are
checked against the manifest's checksum when they are read.

Format 2 (this writer): tensor files (:mod:`~fi_dist.runtime.checkpoint.tensorfile`),
XXH3-128 per file. Format 1 (before): ``torch.save``'d ``*.pt`` files, sha256 per file;
still loaded.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from fi_dist.errors import FiDistError
from fi_dist.runtime.checkpoint import hashing
from fi_dist.runtime.checkpoint.storage import Storage

MANIFEST = "manifest.json"
STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
FORMAT = 2
READABLE_FORMATS = (1, 2)


class CheckpointError(FiDistError):
    """A checkpoint could not be saved or loaded."""


class CheckpointCorruptError(CheckpointError):
    """A committed checkpoint's file is missing, torn or fails its checksum."""


def step_dirname(step: int) -> str:
    return f"{STEP_PREFIX}{step:010d}"


def parse_step(name: str) -> int | None:
    """The step of a ``step-NNNNNNNNNN`` directory name, else None."""
    if not name.startswith(STEP_PREFIX):
        return None
    digits = name[len(STEP_PREFIX):]
    return int(digits) if digits.isdigit() else None


def sha256(data: bytes) -> str:
    return hashing.digest(hashing.SHA256, data)


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint: its size and checksum."""

    size: int
    digest: str
    algo: str = hashing.XXH3_128
    """Checksum name: ``xxh3_128`` (format 2) or ``sha256`` (format 1)."""

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, self.algo: self.digest}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FileEntry:
        for algo in hashing.ALGORITHMS:
            if algo in body:
                return cls(int(body["size"]), str(body[algo]), algo)
        raise KeyError(f"no checksum among {sorted(body)}")


@dataclass
class Manifest:
    """The commit record of one checkpoint."""

    step: int
    """Completed training steps: the step a resumed run starts from."""
    world_size: int
    """How many ranks saved it."""
    mode: str
    """``replicated`` (DDP / single process: state saved once) or ``sharded`` (DCP)."""
    files: dict[str, FileEntry] = field(default_factory=dict)
    """Every file of the checkpoint, relative to its directory."""
    created: float = field(default_factory=time.time)
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form facts: save time, attempt, reason (periodic, preemption, final)."""
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        body = asdict(self)
        body["files"] = {k: e.to_json() for k, e in self.files.items()}
        text = json.dumps(body, sort_keys=True)
        body["manifest_sha256"] = sha256(text.encode())
        return json.dumps(body, sort_keys=True, indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Manifest:
        """Parse and self-check a manifest.

        Raises:
            CheckpointCorruptError: not JSON, wrong format, or a self-checksum mismatch.
        """
        try:
            body = json.loads(data)
            claimed = body.pop("manifest_sha256")
            if sha256(json.dumps(body, sort_keys=True).encode()) != claimed:
                raise CheckpointCorruptError(f"{where}: manifest checksum mismatch (torn write?)")
            if body.get("format") not in READABLE_FORMATS:
                raise CheckpointCorruptError(f"{where}: unknown manifest format {body.get('format')!r}")
            body["files"] = {k: FileEntry.from_json(v) for k, v in body["files"].items()}
            return cls(**body)
        except CheckpointCorruptError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointCorruptError(f"{where}: unreadable manifest ({exc})") from None


@dataclass
class Candidate:
    """A committed checkpoint on storage."""

    step: int
    path: str
    manifest: Manifest


def read_manifest(storage: Storage, path: str) -> Manifest:
    """The manifest of the checkpoint directory ``path``.

    Raises:
        CheckpointCorruptError: missing, unreadable, or listing a missing / resized file.
    """
    mpath = f"{path}/{MANIFEST}"
    try:
        data = storage.read_bytes(mpath)
    except FileNotFoundError:
        raise CheckpointCorruptError(f"{path}: no {MANIFEST} (an incomplete save)") from None
    m = Manifest.from_bytes(data, mpath)
    for name, entry in m.files.items():
        fpath = f"{path}/{name}"
        try:
            size = storage.size(fpath)
        except FileNotFoundError:
            raise CheckpointCorruptError(f"{fpath}: listed in the manifest but missing") from None
        if size != entry.size:
            raise CheckpointCorruptError(
                f"{fpath}: size {size} but the manifest says {entry.size} (torn or replaced)")
    return m


def scan(storage: Storage) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """All checkpoints under the root: (complete ones newest first, [(path, why) rejected]).

    Temporary directories of saves in progress are neither; :func:`garbage` lists them.
    """
    complete: list[Candidate] = []
    rejected: list[tuple[str, str]] = []
    for name in storage.listdir():
        step = parse_step(name)
        if step is None:
            continue
        path = storage.join(name)
        try:
            m = read_manifest(storage, path)
        except CheckpointCorruptError as exc:
            rejected.append((path, str(exc)))
            continue
        if m.step != step:
            rejected.append((path, f"{path}: manifest step {m.step} != directory step {step}"))
            continue
        complete.append(Candidate(step, path, m))
    complete.sort(key=lambda c: c.step, reverse=True)
    return complete, rejected


def remove(storage: Storage, path: str) -> None:
    """Delete the checkpoint directory ``path`` so that a delete cut short by a kill leaves
    nothing a scan would report, and nothing the next start's :func:`garbage` misses.

    Locally the directory is first renamed to a temporary name (atomic); on object stores
    its manifest goes first.
    """
    if storage.atomic_rename:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        doomed = storage.join(f"{TMP_PREFIX}{name}-deleting")
        storage.rm(doomed)  # left by an earlier delete of the same step
        storage.rename(path, doomed)
        storage.rm(doomed)
    else:
        storage.rm(f"{path}/{MANIFEST}")
        storage.rm(path)


def garbage(storage: Storage) -> list[str]:
    """Leftovers no load will ever use: temporary save directories."""
    return [storage.join(n) for n in storage.listdir() if n.startswith(TMP_PREFIX)]


def verify(entry: FileEntry | None, data: bytes, path: str) -> None:
    """Check ``data`` read from ``path`` against its manifest entry.

    Raises:
        CheckpointCorruptError: naming ``path``, when size or checksum differ.
    """
    if entry is None:
        raise CheckpointCorruptError(f"{path}: not listed in the manifest")
    check(entry, len(data), hashing.digest(entry.algo, data), path)


def check(entry: FileEntry, size: int, digest: str, path: str) -> None:
    """Compare what was read (``size`` bytes hashing to ``digest``) with ``entry``.

    Raises:
        CheckpointCorruptError: naming ``path``, when size or checksum differ.
    """
    if size != entry.size:
        raise CheckpointCorruptError(f"{path}: read {size} bytes, manifest says {entry.size}")
    if digest != entry.digest:
        raise CheckpointCorruptError(
            f"{path}: checksum mismatch ({entry.algo} {digest[:12]}... != manifest "
            f"{entry.digest[:12]}...)")
