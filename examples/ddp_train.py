"""A small deterministic DDP training job (synthetic seeded data).

Run it under ``fi-dist run`` or ``torchrun``; gloo on CPU, nccl when CUDA is there.
The last line rank 0 prints is ``final checksum: <hex>`` over all model parameters:
identical across runs with the same arguments and world size.

    fi-dist run --nnodes 2 --nproc-per-node 2 examples/ddp_train.py -- --steps 20
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=20, help="training steps")
    p.add_argument("--batch-size", type=int, default=16, help="per-rank batch size")
    p.add_argument("--hidden", type=int, default=64, help="hidden width")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--ckpt-dir", default=os.environ.get("FI_DIST_CKPT_DIR"),
                   help="checkpoint directory or URI (resume from it when it holds one)")
    p.add_argument("--ckpt-every", type=int, default=0, help="save every N steps (0: never)")
    p.add_argument("--step-sleep", type=float, default=0.0,
                   help="seconds to sleep per step (to make a slow job for demos and tests)")
    return p.parse_args(argv)


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(16, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def batch(step: int, rank: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of ``rank`` at ``step``: a pure function of its inputs (resumable)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    x = torch.randn(size, 16, generator=g)
    y = x[:, :1] * 0.5 - x[:, 1:2] ** 2 + 0.1 * torch.randn(size, 1, generator=g)
    return x, y


def checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=30))
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    model = make_model(args.hidden).to(device)
    resumable = bool(args.ckpt_dir and args.ckpt_every > 0)
    # A new DDP reduces its first iterations in one bucket in registration order, later
    # ones in buckets in backward order; with > 2 ranks the ring sum of an element
    # depends on where it sits, so the DDP rebuilt on resume would differ in the last
    # bits. One bucket per parameter at every age makes a resumed run bit-exact.
    bucket = {"bucket_cap_mb_list": [1e-6]} if resumable else {}
    ddp = DDP(model, device_ids=[local_rank] if use_cuda else None, **bucket)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.MSELoss()

    start = 0
    ckpt = None
    if args.ckpt_dir and args.ckpt_every > 0:
        from fi_dist.runtime.checkpoint import Checkpointer

        ckpt = Checkpointer(args.ckpt_dir, model=ddp, optimizer=opt, every=args.ckpt_every)
        start = ckpt.resume()
    steps = range(start, args.steps) if ckpt is None else ckpt.steps(args.steps)
    t0 = time.perf_counter()
    for step in steps:
        x, y = batch(step, rank, args.batch_size, args.seed)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        if args.step_sleep:
            time.sleep(args.step_sleep)
        if step % 5 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.6f}", flush=True)
    elapsed = time.perf_counter() - t0
    print(f"done: {args.steps - start} steps in {elapsed:.3f}s", flush=True)
    dist.barrier()
    if rank == 0:
        print(f"world size {world}", flush=True)
        print(f"final checksum: {checksum(model)}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
