"""Flyte's per-attempt checkpoint (``current_context().checkpoint``) for many ranks.

Flyte gives a task ONE checkpoint location (``checkpoint_dest``) and the previous
attempt's one (``checkpoint_src``). If every rank called ``save()`` / ``restore()`` on
the same paths they would overwrite each other. Here:

* :func:`restore_from_flyte`: every rank downloads the previous attempt's checkpoint
  into its OWN directory ``<local_root>/rank-<r>`` (nothing shared is written);
* :func:`save_to_flyte`: only the coordinator (rank 0) uploads, and only committed
  ``step-*`` directories (never a save in progress).

flytekit is not imported here: the checkpoint object is passed in.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fi_dist.runtime.checkpoint import layout


def _rank(rank: int | None) -> int:
    return int(os.environ.get("RANK", "0")) if rank is None else rank


def rank_dir(local_root: str | Path, rank: int | None = None) -> Path:
    """``<local_root>/rank-<r>``: where rank ``r`` keeps its copy."""
    return Path(local_root) / f"rank-{_rank(rank):05d}"


def restore_from_flyte(checkpoint: Any, local_root: str | Path, rank: int | None = None) -> Path | None:
    """Download the previous attempt's checkpoint into this rank's private directory.

    Args:
        checkpoint: flytekit's ``current_context().checkpoint``.
        local_root: a local directory; rank ``r`` writes only ``<local_root>/rank-<r>``.
        rank: defaults to ``$RANK``.

    Returns:
        The rank's directory when a previous checkpoint existed, else None.
    """
    if checkpoint is None or not checkpoint.prev_exists():
        return None
    target = rank_dir(local_root, rank)
    target.mkdir(parents=True, exist_ok=True)
    restored = checkpoint.restore(target)
    if restored is not None and Path(restored).resolve() != target.resolve():
        # SyncCheckpoint downloads once per object and then returns that first path;
        # copy it, so this rank still owns a private directory.
        shutil.copytree(restored, target, dirs_exist_ok=True)
    return target


def save_to_flyte(checkpoint: Any, ckpt_dir: str | Path, rank: int | None = None) -> bool:
    """Upload the committed checkpoints under local ``ckpt_dir`` (rank 0 only).

    Returns:
        True when this rank uploaded (rank 0 with at least one committed checkpoint).
    """
    if checkpoint is None or _rank(rank) != 0:
        return False
    src = Path(ckpt_dir)
    committed = [p for p in src.iterdir() if layout.parse_step(p.name) is not None
                 and (p / layout.MANIFEST).is_file()] if src.is_dir() else []
    if not committed:
        return False
    # Stage a copy without in-progress saves, so the upload is only complete checkpoints.
    with tempfile.TemporaryDirectory(prefix="fi-dist-flyte-") as tmp:
        for p in committed:
            shutil.copytree(p, Path(tmp) / p.name)
        checkpoint.save(tmp)
    return True
