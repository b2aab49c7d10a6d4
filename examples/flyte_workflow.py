"""A Flyte workflow with an Elastic (torchrun) training task made debuggable by fi-dist.

    python examples/flyte_workflow.py --steps 8                  # flytekit local execution
    pyflyte run examples/flyte_workflow.py wf --steps 8
    FI_DIST_INTERACTIVE=1 python examples/flyte_workflow.py      # with the interactive session

Locally the Elastic task starts 2 real ranks (gloo on CPU). ``@interactive_pytorch`` is
off unless ``FI_DIST_INTERACTIVE=1`` (or ``enable=True``); when on, rank 0 starts the debug
hub and code-server (URL and password in ``.vscode/fi-dist-session.json`` beside this
file), every rank runs debugpy, and a failing rank waits post-mortem for a resume with
edited code. The task returns the checksum of the trained model: the same with the
decorator on or off.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from flytekit import task, workflow
from flytekitplugins.kfpytorch import Elastic
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fi_dist import interactive_pytorch


def make_batch(step: int, rank: int, seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s batch at ``step``: a pure function of its inputs (resumable)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(16, 16, generator=g)
    return x, x[:, :1] * 0.5 - x[:, 1:2] ** 2


def checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# max_restarts: every resume with edited code restarts the worker group once.
@task(task_config=Elastic(nnodes=1, nproc_per_node=2, max_restarts=3))
@interactive_pytorch(port=0, debug_port=0)  # 0: free ports, named in the session file
def train(steps: int = 8, ckpt_dir: str = "") -> str:
    dist.init_process_group("gloo", timeout=timedelta(minutes=10))
    rank = dist.get_rank()
    torch.manual_seed(1234)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    if ckpt_dir:
        from fi_dist import Checkpointer

        ckpt = Checkpointer(ckpt_dir, model=ddp, optimizer=opt, every=1, async_save=False)
        step_iter = ckpt.steps(steps)
    else:
        step_iter = iter(range(steps))
    for step in step_iter:
        x, y = make_batch(step, rank)
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(ddp(x), y)
        loss.backward()
        opt.step()
        print(f"[rank {rank}] step {step} loss {loss.item():.6f}", flush=True)
    dist.barrier()
    result = checksum(model)
    dist.destroy_process_group()
    return result


@workflow
def wf(steps: int = 8, ckpt_dir: str = "") -> str:
    return train(steps=steps, ckpt_dir=ckpt_dir)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--ckpt-dir", default=os.environ.get("FI_DIST_CKPT_DIR", ""))
    a = p.parse_args()
    print(f"final checksum: {wf(steps=a.steps, ckpt_dir=a.ckpt_dir)}", flush=True)
