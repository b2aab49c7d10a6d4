"""Each rank prints its view of the job as one JSON line, then all_reduces rank+1."""

import json
import os

import torch
import torch.distributed as dist

from fi_dist.runtime.environment import RankEnvironment

dist.init_process_group("gloo")
env = RankEnvironment.from_env()
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
keys = ("PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR",
        "PET_MASTER_PORT", "FI_DIST_NODE_ADDR", "PYTHONUNBUFFERED", "GROUP_RANK")
view = {
    "rank": env.rank, "local_rank": env.local_rank, "node_rank": env.node_rank,
    "world_size": env.world_size, "local_world_size": env.local_world_size,
    "node_addr": env.node_addr, "master_addr": env.master_addr, "launcher": env.launcher.value,
    "dist_rank": dist.get_rank(), "dist_world": dist.get_world_size(),
    "allreduce": t.item(), "env": {k: os.environ.get(k) for k in keys},
}
print("PROBE " + json.dumps(view), flush=True)
dist.barrier()
dist.destroy_process_group()
