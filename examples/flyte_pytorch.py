"""A multi-pod Flyte ``PyTorch(num_workers=1)`` task made debuggable by fi-dist.

A PyTorch task runs as a Kubeflow PyTorchJob: the Master pod and ``num_workers`` Worker
pods each run flytekit's task entrypoint (``pyflyte-execute ...``) with the operator's
MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE, and no torchrun. Each pod is one rank;
``init_process_group("gloo")`` (env://) forms the group. With ``@interactive_pytorch``
on, rank 0 hosts the job's store, the debug hub, code-server and the resume endpoint;
the other pod's rank registers with the hub through that store.

Run it locally, pod by pod, through flytekit's real entrypoint (docs/flyte.md)::

    cd examples
    python -m fi_dist.integrations.flyte_pods flyte_pytorch.py train --dir /tmp/exec \\
        steps=8 ckpt_dir=/tmp/exec/ckpt > /tmp/exec/pod-command
    export FI_DIST_DEBUG_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
    FI_DIST_INTERACTIVE=1 fi-dist run --pod-entrypoint --nnodes 2 --max-restarts 3 \\
        --no-python $(cat /tmp/exec/pod-command)
    python -m fi_dist.integrations.flyte_pods outputs /tmp/exec   # the task's output

or as one process (flytekit local execution, world size 1)::

    python examples/flyte_pytorch.py --steps 8

The task returns the checksum of the trained model: the same with the decorator on or
off, and the same after a resume from a checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from flytekit import task, workflow
from flytekitplugins.kfpytorch import PyTorch
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


def _single_process_defaults() -> None:
    # flytekit's local execution runs a PyTorch task in this one process, with no
    # operator env: make it a group of one.
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0",
                          WORLD_SIZE="1")


@task(task_config=PyTorch(num_workers=1))
@interactive_pytorch(port=0, debug_port=0)  # 0: free ports, named in the session file
def train(steps: int = 8, ckpt_dir: str = "") -> str:
    _single_process_defaults()
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--ckpt-dir", default="")
    a = p.parse_args()
    print(f"final checksum: {wf(steps=a.steps, ckpt_dir=a.ckpt_dir)}", flush=True)
