"""The debug part of the launcher -> runtime env contract (what every node gets)."""

from __future__ import annotations

import secrets

from fi_dist import env_vars as ev
from fi_dist.spec import DebugSpec


def new_token() -> str:
    """A fresh job token: every hub connection (rank or IDE) must present it."""
    return secrets.token_hex(16)


def debug_env(spec: DebugSpec, rank_port: int, token: str | None = None) -> dict[str, str]:
    """FI_DIST_DEBUG* variables for every node of a ``--debug`` job ({} when off).

    Args:
        spec: the job's debug options.
        rank_port: the hub's rank-facing port on node 0 (ranks dial MASTER_ADDR:rank_port).
        token: the job token; a new one when None.
    """
    if not spec.enabled:
        return {}
    return {
        ev.FI_DIST_DEBUG: "1",
        ev.FI_DIST_DEBUG_PORT: str(spec.port),
        ev.FI_DIST_DEBUG_HOST: spec.host,
        ev.FI_DIST_DEBUG_RANK_PORT: str(rank_port),
        ev.FI_DIST_DEBUG_TOKEN: token or new_token(),
        ev.FI_DIST_WAIT_FOR_CLIENT: "1" if spec.wait_for_client else "0",
        ev.FI_DIST_POST_MORTEM_WAIT: str(spec.post_mortem_wait),
        ev.FI_DIST_DEBUG_TRACE: spec.trace,
    }
