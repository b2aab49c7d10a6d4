"""The last rank raises after the others are inside a collective waiting for it."""

import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
if dist.get_rank() == dist.get_world_size() - 1:
    time.sleep(1.0)
    raise ValueError("deliberate failure on the last rank")
dist.all_reduce(torch.ones(1))
