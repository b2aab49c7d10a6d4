"""Where a Ray job's ranks go and what env they get; shared by the Ray client and driver.

No Ray import: ``fi-dist run --launcher ray --dry-run`` and the client side plan with
it, and the driver (:mod:`fi_dist.launchers.ray_driver`) places actors by it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fi_dist import env_vars as ev
from fi_dist.contract import JobContract, LauncherKind
from fi_dist.errors import ConfigError
from fi_dist.spec import JobSpec

HEAD_RESOURCE = "node:__internal_head__"
PREEMPTED_EXIT = 143
# Keep a Ray started here small and on loopback (see docs/launchers.md).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
LOCAL_OBJECT_STORE_BYTES = 80 * 1024 * 1024


def prepare_local_ray() -> None:
    """Before ray is imported: a Ray started here listens on loopback only.

    Ray reads these when it is imported, so they are set first; a driver of a loopback
    cluster then does not advertise the external interface, and no auth token file is
    written.
    """
    address = os.environ.get("RAY_ADDRESS", "")
    if not address or address.startswith("127."):
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)


@dataclass(frozen=True)
class RankPlan:
    rank: int
    node: int
    local_rank: int


@dataclass
class RayRequest:
    spec: JobSpec
    job: JobContract
    bundles: list[dict[str, float]]
    ranks: list[RankPlan]


def plan(spec: JobSpec) -> RayRequest:
    """Bundles (one per spec node) and the rank layout; no Ray needed."""
    if spec.resources.gpus and spec.nproc_per_node > spec.resources.gpus:
        raise ConfigError(f"nproc_per_node: {spec.nproc_per_node} ranks per node but "
                          f"resources.gpus={spec.resources.gpus}: one GPU per rank")
    slot = {"GPU": 1.0} if spec.resources.gpus else {"CPU": 1.0}
    bundles = [{k: v * spec.nproc_per_node for k, v in slot.items()}
               for _ in range(spec.nnodes)]
    bundles[0][HEAD_RESOURCE] = 0.001
    ranks = [RankPlan(n * spec.nproc_per_node + lr, n, lr)
             for n in range(spec.nnodes) for lr in range(spec.nproc_per_node)]
    return RayRequest(spec, JobContract.from_spec(spec, LauncherKind.RAY), bundles, ranks)


def rank_env(spec: JobSpec, r: RankPlan, master: tuple[str, int], node_addr: str
             ) -> dict[str, str]:
    """torchrun's per-rank variables and the node's address: the placement part."""
    env = {
        ev.RANK: str(r.rank), ev.LOCAL_RANK: str(r.local_rank),
        ev.WORLD_SIZE: str(spec.world_size), ev.LOCAL_WORLD_SIZE: str(spec.nproc_per_node),
        ev.GROUP_RANK: str(r.node), ev.GROUP_WORLD_SIZE: str(spec.nnodes),
        ev.ROLE_RANK: str(r.rank), ev.MASTER_ADDR: master[0], ev.MASTER_PORT: str(master[1]),
        ev.FI_DIST_NODE_ADDR: node_addr, ev.FI_DIST_NODE_RANK: str(r.node),
        ev.PYTHONUNBUFFERED: "1",
    }
    if node_addr.startswith("127.") and ev.GLOO_SOCKET_IFNAME not in spec.env:
        env[ev.GLOO_SOCKET_IFNAME] = "lo"  # a loopback-only Ray cluster
    return env
