"""GPU check of the checkpoint paths that only run with CUDA: pinned staging, NCCL, DCP.

    python bench/gpu_checkpoint_check.py [--mb 512] [--dir DIR]

One process, one GPU, a NCCL process group of one rank (a second rank would need a
second GPU). Three round trips, each resumed into a freshly built model and compared
bit for bit (parameters, optimizer state, step):

1. DDP on CUDA + Adam, replicated files: an async save staged through pinned host
   buffers (the loop's stall is the device-to-host copy; printed beside a bare copy of
   the same tensors into pinned memory and the synchronous save), then a resume.
2. FSDP2 (``fully_shard``) on CUDA + Adam through DCP: fi-dist's own DCP storage layer
   reads the shards into CUDA tensors (the path that copies from host bytes).
3. The checkpoint's agreement group: with NCCL as the default backend the checkpoint
   makes its own gloo group (object collectives stay on the host).

Without CUDA it says so in one line and exits 0 (CI has no GPU; this is a device
check, not a test). Exit codes: 0 pass, 1 fail.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from checkpoint_bench import bare_copy_seconds, state_tensors

MiB = float(1 << 20)


def build(mb: int, seed: int, shard: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    width = 2048
    layers = max(1, int(mb * 2**20 / 4 / 3) // (width * width))
    model: Any = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False)
                                       for _ in range(layers)]).cuda()
    if shard:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            fully_shard(layer)
        fully_shard(model)
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[torch.cuda.current_device()])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, width, device="cuda")
    model(x).square().mean().backward()
    opt.step()
    torch.cuda.synchronize()
    return model, opt


def full(t: Any) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def same(a: tuple[torch.nn.Module, torch.optim.Optimizer],
         b: tuple[torch.nn.Module, torch.optim.Optimizer]) -> list[str]:
    """What differs between two (model, optimizer) pairs; [] when bit-identical."""
    bad = []
    for (n, p), (_, q) in zip(a[0].named_parameters(), b[0].named_parameters(), strict=True):
        if q.device.type != "cuda" or not torch.equal(full(p), full(q)):
            bad.append(f"param {n}")
    for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True):
        sa, sb = a[1].state[p], b[1].state[q]
        for k in sa:
            x, y = sa[k], sb.get(k)
            if not (isinstance(y, torch.Tensor) and torch.equal(full(x).cpu(), full(y).cpu())):
                bad.append(f"optimizer {k}")
    return bad


def replicated(mb: int, root: Path) -> list[str]:
    from fi_dist.runtime.checkpoint import Checkpointer

    model, opt = build(mb, 0, shard=False)
    ck = Checkpointer(str(root / "ddp"), model=model, optimizer=opt, keep_last=1)
    ck.resume()
    stalls, syncs = [], []
    for i in range(5):
        t0 = time.perf_counter()
        ck.save(2 * i + 1, block=True)
        syncs.append(time.perf_counter() - t0)
        ck.wait()
        ck.save(2 * i + 2, block=False)
        stalls.append(ck.stall_seconds or 0.0)
        ck.wait()
    tensors = state_tensors(model, opt)
    copy = bare_copy_seconds(tensors, 5)
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    stall, sync = statistics.median(stalls), statistics.median(syncs)
    print(f"   state {nbytes / MiB:.0f} MiB on {torch.cuda.get_device_name()}: async stall "
          f"{stall * 1e3:.1f} ms / sync save {sync * 1e3:.0f} ms = {stall / sync:.3f} (goal <= "
          f"0.05); bare device->pinned copy {copy * 1e3:.1f} ms "
          f"({nbytes / copy / 1e9:.1f} GB/s), stall / bare copy {stall / copy:.2f}; "
          f"sync save {nbytes / sync / MiB:.0f} MiB/s; stalls {[round(s * 1e3, 1) for s in stalls]}")
    ck.close()
    return resume_and_compare((model, opt), mb, root / "ddp", 10)


def resume_and_compare(saved: tuple[torch.nn.Module, torch.optim.Optimizer], mb: int,
                       ckdir: Path, step: int) -> list[str]:
    """Resume a freshly built model of the same kind from ``ckdir``; what differs."""
    from fi_dist.runtime.checkpoint import Checkpointer
    from fi_dist.runtime.checkpoint.state import is_sharded

    fresh = build(mb, 1, shard=is_sharded(saved[0]))
    ck = Checkpointer(str(ckdir), model=fresh[0], optimizer=fresh[1])
    t0 = time.perf_counter()
    got = ck.resume()
    print(f"   resume onto CUDA: step {got} in {(time.perf_counter() - t0) * 1e3:.0f} ms")
    ck.close()
    return same(saved, fresh) + ([] if got == step else [f"resumed step {got} != {step}"])


def sharded(mb: int, root: Path) -> list[str]:
    from fi_dist.runtime.checkpoint import Checkpointer

    model, opt = build(mb, 0, shard=True)
    ck = Checkpointer(str(root / "fsdp"), model=model, optimizer=opt, keep_last=1)
    ck.resume()
    t0 = time.perf_counter()
    ck.save(3, block=True)
    ck.wait()
    print(f"   FSDP2 DCP save {(time.perf_counter() - t0) * 1e3:.0f} ms; agreement group "
          f"backend: {'gloo (own group)' if ck.ranks.group is not None else 'default'}")
    ck.close()
    bad = [] if ck.ranks.group is not None else ["checkpoint agreement runs on NCCL"]
    return bad + resume_and_compare((model, opt), mb, root / "fsdp", 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=512, help="model + Adam state, MiB")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_checkpoint_check: no CUDA device here; nothing to check")
        return 0
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    failed = False
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for name, check in (("replicated (DDP, pinned async)", replicated),
                            ("sharded (FSDP2, DCP)", sharded)):
            print(f"{name}:")
            bad = check(a.mb, Path(tmp))
            print(f"   {'PASS' if not bad else 'FAIL: ' + '; '.join(bad[:5])}")
            failed |= bool(bad)
    dist.destroy_process_group()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
