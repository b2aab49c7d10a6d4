"""Who am I: the one place that reads a process's place in the job from its env.

Two views:

* :class:`NodeEnvironment` for a node-level process (a PyTorchJob pod's main process,
  the local launcher's node agent): nnodes, ranks per node, node rank, master.
* :class:`RankEnvironment` for one training rank: global/local/node rank and sizes.

Only environment variables are read (no network, no torch import), so this runs the
same in a pod, a Ray actor or a test. Inconsistent values raise
:class:`~fi_dist.errors.InconsistentEnvError` naming the variables.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from fi_dist import env_vars as ev
from fi_dist.contract import LauncherKind, detect_launcher
from fi_dist.errors import InconsistentEnvError

__all__ = ["LauncherKind", "NodeEnvironment", "RankEnvironment", "detect_launcher",
           "rank_from_env"]


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise InconsistentEnvError(f"{name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise InconsistentEnvError(f"{name} must be an integer, got {raw!r}") from None


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    port = _int(env, name, default)
    if not 0 < port < 65536:
        raise InconsistentEnvError(f"{name} must be a port in 1..65535, got {port}")
    return port


def _default_node_addr() -> str:
    # In a pod the hostname resolves to the pod IP; elsewhere loopback is the safe answer.
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


@dataclass(frozen=True)
class NodeEnvironment:
    """A node-level process's view (what a PyTorchJob pod's env says)."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    node_addr: str
    launcher: LauncherKind

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> NodeEnvironment:
        """Read the operator's variables (PET_* first, then MASTER_*/RANK/WORLD_SIZE)."""
        env = os.environ if env is None else env
        nnodes = _int(env, ev.PET_NNODES, _int(env, ev.WORLD_SIZE, 1))
        node_rank = _int(env, ev.PET_NODE_RANK, _int(env, ev.RANK, 0))
        nproc = _int(env, ev.PET_NPROC_PER_NODE, 1)
        if nnodes < 1:
            raise InconsistentEnvError(f"{ev.PET_NNODES}/{ev.WORLD_SIZE} must be >= 1, got {nnodes}")
        if nproc < 1:
            raise InconsistentEnvError(f"{ev.PET_NPROC_PER_NODE} must be >= 1, got {nproc}")
        if not 0 <= node_rank < nnodes:
            raise InconsistentEnvError(
                f"{ev.PET_NODE_RANK}/{ev.RANK}={node_rank} is outside 0..{nnodes - 1} "
                f"given {ev.PET_NNODES}/{ev.WORLD_SIZE}={nnodes}"
            )
        # The training operator up to v1.7 sets WORLD_SIZE to the pod count; v1.8+ to
        # pods x nprocPerNode. Either agrees with PET_NNODES; anything else is a mix-up.
        if ev.PET_NNODES in env and ev.WORLD_SIZE in env and _int(env, ev.WORLD_SIZE) not in (
                nnodes, nnodes * nproc):
            raise InconsistentEnvError(
                f"{ev.WORLD_SIZE}={env[ev.WORLD_SIZE]} disagrees with {ev.PET_NNODES}="
                f"{env[ev.PET_NNODES]} (expected the pod count, or pods x "
                f"{ev.PET_NPROC_PER_NODE}={nnodes * nproc})"
            )
        master_addr = env.get(ev.PET_MASTER_ADDR) or env.get(ev.MASTER_ADDR) or "127.0.0.1"
        master_port = _port(env, ev.PET_MASTER_PORT, _port(env, ev.MASTER_PORT, 29500))
        return cls(
            nnodes=nnodes,
            nproc_per_node=nproc,
            node_rank=node_rank,
            master_addr=master_addr,
            master_port=master_port,
            node_addr=env.get(ev.FI_DIST_NODE_ADDR) or _default_node_addr(),
            launcher=detect_launcher(env),
        )


@dataclass(frozen=True)
class RankEnvironment:
    """One training rank's view of the job."""

    rank: int
    local_rank: int
    node_rank: int
    world_size: int
    local_world_size: int
    master_addr: str
    master_port: int
    node_addr: str
    launcher: LauncherKind

    @property
    def nnodes(self) -> int:
        return self.world_size // self.local_world_size

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    def label(self) -> str:
        """How logs and the debugger name this rank: ``rank 3 (node 1)``."""
        return f"rank {self.rank} (node {self.node_rank})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RankEnvironment:
        """Read RANK/LOCAL_RANK/WORLD_SIZE/... for a worker process.

        Raises:
            InconsistentEnvError: a variable is missing, not an integer, or contradicts
                another (the message names both).
        """
        env = os.environ if env is None else env
        kind = detect_launcher(env)
        if kind is LauncherKind.SINGLE and ev.RANK not in env:
            return cls(0, 0, 0, 1, 1, "127.0.0.1", _port(env, ev.MASTER_PORT, 29500),
                       env.get(ev.FI_DIST_NODE_ADDR) or "127.0.0.1", kind)
        if kind is LauncherKind.PYTORCHJOB and ev.TORCHELASTIC_RUN_ID not in env:
            # A pod whose command is the rank (a Flyte PyTorch task: no torchrun): the
            # operator's RANK and WORLD_SIZE are the rank's own. nprocPerNode defaults to
            # "auto" when the job does not set it, one process per pod here.
            auto = env.get(ev.PET_NPROC_PER_NODE) == "auto"
            nproc = 1 if auto else _int(env, ev.PET_NPROC_PER_NODE, 1)
            if nproc != 1:
                raise InconsistentEnvError(
                    f"{ev.PET_NPROC_PER_NODE}={nproc} but {ev.TORCHELASTIC_RUN_ID} is unset: "
                    "this is the pod's node-level process, not a rank; start the ranks "
                    "with torchrun (or read NodeEnvironment)"
                )
        rank = _int(env, ev.RANK)
        world = _int(env, ev.WORLD_SIZE)
        local_rank = _int(env, ev.LOCAL_RANK, 0)
        local_world = _int(env, ev.LOCAL_WORLD_SIZE, 1)
        node_rank = _int(env, ev.GROUP_RANK, _int(env, ev.FI_DIST_NODE_RANK, rank // local_world))
        if world < 1:
            raise InconsistentEnvError(f"{ev.WORLD_SIZE} must be >= 1, got {world}")
        if not 0 <= rank < world:
            raise InconsistentEnvError(
                f"{ev.RANK}={rank} is outside 0..{world - 1} given {ev.WORLD_SIZE}={world}"
            )
        if not 0 <= local_rank < local_world:
            raise InconsistentEnvError(
                f"{ev.LOCAL_RANK}={local_rank} is outside 0..{local_world - 1} "
                f"given {ev.LOCAL_WORLD_SIZE}={local_world}"
            )
        if local_world > world:
            raise InconsistentEnvError(
                f"{ev.LOCAL_WORLD_SIZE}={local_world} exceeds {ev.WORLD_SIZE}={world}"
            )
        if ev.GROUP_RANK in env and world % local_world == 0:
            expected = node_rank * local_world + local_rank
            if expected != rank:
                raise InconsistentEnvError(
                    f"{ev.RANK}={rank} but {ev.GROUP_RANK}={node_rank} * "
                    f"{ev.LOCAL_WORLD_SIZE}={local_world} + {ev.LOCAL_RANK}={local_rank} = {expected}"
                )
        return cls(
            rank=rank,
            local_rank=local_rank,
            node_rank=node_rank,
            world_size=world,
            local_world_size=local_world,
            master_addr=env.get(ev.MASTER_ADDR) or "127.0.0.1",
            master_port=_port(env, ev.MASTER_PORT, 29500),
            node_addr=env.get(ev.FI_DIST_NODE_ADDR) or _default_node_addr(),
            launcher=kind,
        )


def rank_from_env(env: Mapping[str, str] | None = None) -> RankEnvironment:
    """Shorthand for :meth:`RankEnvironment.from_env`."""
    return RankEnvironment.from_env(env)
