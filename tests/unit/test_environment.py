"""environment.py: who am I, for every launcher kind, and errors that name variables."""

from __future__ import annotations

import pytest

from fi_dist.errors import InconsistentEnvError
from fi_dist.runtime.environment import (
    LauncherKind,
    NodeEnvironment,
    RankEnvironment,
    detect_launcher,
)

# What the Kubeflow training operator injects into node 1's pod of a 2-node job.
POD_ENV = {
    "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "1",
    "PET_NNODES": "2", "PET_NPROC_PER_NODE": "4", "PET_NODE_RANK": "1",
    "PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": "23456", "PYTHONUNBUFFERED": "1",
}


def torchrun_worker(rank: int, local_rank: int, group_rank: int, world: int, local_world: int,
                    **extra: str) -> dict[str, str]:
    return {
        "RANK": str(rank), "LOCAL_RANK": str(local_rank), "GROUP_RANK": str(group_rank),
        "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(local_world),
        "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "abc",
        **extra,
    }


def test_plain_torchrun_worker():
    env = RankEnvironment.from_env(torchrun_worker(5, 1, 1, 8, 4, FI_DIST_NODE_ADDR="10.0.0.6"))
    assert env.launcher is LauncherKind.TORCHRUN
    assert (env.rank, env.local_rank, env.node_rank) == (5, 1, 1)
    assert (env.world_size, env.local_world_size, env.nnodes) == (8, 4, 2)
    assert (env.master_addr, env.master_port, env.node_addr) == ("10.0.0.5", 29500, "10.0.0.6")
    assert env.label() == "rank 5 (node 1)"


def test_pytorchjob_pod_node_level():
    node = NodeEnvironment.from_env(POD_ENV)
    assert node.launcher is LauncherKind.PYTORCHJOB
    assert (node.nnodes, node.nproc_per_node, node.node_rank) == (2, 4, 1)
    assert (node.master_addr, node.master_port) == ("job-master-0", 23456)


def test_pytorchjob_pod_with_torchrun_inside():
    # torchrun inside the pod overrides RANK/WORLD_SIZE with the global view.
    env = {**POD_ENV, **torchrun_worker(6, 2, 1, 8, 4)}
    rank = RankEnvironment.from_env(env)
    assert rank.launcher is LauncherKind.PYTORCHJOB
    assert (rank.rank, rank.local_rank, rank.node_rank, rank.world_size) == (6, 2, 1, 8)


def test_pod_node_level_process_is_not_a_rank():
    with pytest.raises(InconsistentEnvError, match="PET_NPROC_PER_NODE=4.*TORCHELASTIC_RUN_ID"):
        RankEnvironment.from_env(POD_ENV)


def test_pod_one_process_per_pod_is_a_rank():
    env = {**POD_ENV, "PET_NPROC_PER_NODE": "1"}
    rank = RankEnvironment.from_env(env)
    assert (rank.rank, rank.world_size, rank.node_rank) == (1, 2, 1)


def test_flyte_pytorch_task_pod_is_its_rank():
    """A Flyte PyTorch(num_workers=N) pod: no torchrun, nprocPerNode left at "auto"."""
    from fi_dist.k8s.operator import pod_env

    env = pod_env("train-master-0", 23456, 3, "auto", 2)
    rank = RankEnvironment.from_env(env)
    assert rank.launcher is LauncherKind.PYTORCHJOB
    assert (rank.rank, rank.world_size, rank.node_rank, rank.local_rank) == (2, 3, 2, 0)
    assert (rank.master_addr, rank.master_port, rank.nnodes) == ("train-master-0", 23456, 3)


def test_ray_rank():
    env = torchrun_worker(3, 1, 1, 4, 2, FI_DIST_LAUNCHER="ray")
    del env["TORCHELASTIC_RUN_ID"]
    assert RankEnvironment.from_env(env).launcher is LauncherKind.RAY


def test_local_launcher_rank():
    env = torchrun_worker(2, 0, 1, 4, 2, FI_DIST_LAUNCHER="local", FI_DIST_NODE_ADDR="127.0.0.3")
    rank = RankEnvironment.from_env(env)
    assert rank.launcher is LauncherKind.LOCAL and rank.node_addr == "127.0.0.3"


def test_single_process():
    rank = RankEnvironment.from_env({})
    assert rank.launcher is LauncherKind.SINGLE
    assert (rank.rank, rank.world_size, rank.local_world_size) == (0, 1, 1)
    assert detect_launcher({}) is LauncherKind.SINGLE


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (torchrun_worker(8, 0, 2, 8, 4), ["RANK=8", "WORLD_SIZE=8"]),
        (torchrun_worker(1, 4, 0, 8, 4), ["LOCAL_RANK=4", "LOCAL_WORLD_SIZE=4"]),
        (torchrun_worker(5, 1, 0, 8, 4), ["RANK=5", "GROUP_RANK=0", "LOCAL_RANK=1"]),
        ({**torchrun_worker(0, 0, 0, 2, 1), "RANK": "zero"}, ["RANK", "'zero'"]),
        ({**torchrun_worker(0, 0, 0, 2, 1), "MASTER_PORT": "70000"}, ["MASTER_PORT"]),
        ({"FI_DIST_LAUNCHER": "slurm", "RANK": "0"}, ["FI_DIST_LAUNCHER", "'slurm'"]),
        ({"RANK": "0", "TORCHELASTIC_RUN_ID": "x"}, ["WORLD_SIZE is not set"]),
    ],
)
def test_inconsistent_rank_env_names_the_variables(env, names):
    with pytest.raises(InconsistentEnvError) as err:
        RankEnvironment.from_env(env)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ({"PET_NODE_RANK": "2"}, ["PET_NODE_RANK", "RANK=2", "PET_NNODES"]),
        ({"WORLD_SIZE": "3"}, ["WORLD_SIZE=3", "PET_NNODES=2"]),
        ({"PET_NPROC_PER_NODE": "0"}, ["PET_NPROC_PER_NODE"]),
    ],
)
def test_inconsistent_pod_env_names_the_variables(override, names):
    with pytest.raises(InconsistentEnvError) as err:
        NodeEnvironment.from_env({**POD_ENV, **override})
    for name in names:
        assert name in str(err.value)
