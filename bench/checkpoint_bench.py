"""Checkpoint benchmarks, as ratios against a baseline measured in the same run, interleaved.

P5  save throughput / raw fsync'd write of the same bytes         (goal >= 0.9)
    1 rank (replicated files) and 2 ranks writing at once (FSDP2 through DCP: each rank
    its shard; the baseline: both ranks raw-write their share at once)
    load (resume) throughput / raw read of the same files          (goal >= 0.9)
    page cache dropped before each read (root: /proc/sys/vm/drop_caches), else said so
    async stall on the loop / synchronous save time                (goal <= 0.05)
P6  SIGTERM -> checkpoint committed, in units of (one step + one save)  (goal <= 1)
    steps lost on preemption                                        (goal <= 1)

Each repeat runs baseline and fi-dist back to back, alternating which goes first. A save
is timed from ``save(block=True)`` to its commit (manifest durable, directory renamed). Deleting the checkpoint that ``keep_last`` retires happens after the commit in
the background; the bench waits for it outside the timed region (``ck.wait()``), so it
overlaps neither baseline nor save.

    python bench/checkpoint_bench.py [--mb 128 1024] [--ranks 1 2] [--repeats 5]
                                     [--preempt-trials 5] [--torch-save]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from fi_dist.runtime.checkpoint import Checkpointer, layout
from fi_dist.runtime.checkpoint.storage import Storage

MiB = float(1 << 20)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def drop_caches() -> bool:
    """Write back and drop the page cache (root only); False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


DEVICE = "cpu"
"""Where the 1-rank bench keeps its model (--device): on CUDA an async save's stall is the
device-to-host copy into pinned buffers."""


def make_model(mb: int, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    # Model + Adam state (2x) = mb megabytes in total.
    torch.manual_seed(seed)
    n = int(mb * 2**20 / 4 / 3)
    width = 1024
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False)
                                  for _ in range(max(1, n // (width * width)))]).to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _materialise(model, opt)
    return model, opt


def _materialise(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = sum(p.sum() for p in model.parameters())
    loss.backward()  # type: ignore[union-attr]
    opt.step()  # materialise Adam's exp_avg / exp_avg_sq


def state_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor an async save snapshots: parameters, buffers, optimizer state."""
    out = [t.detach() for t in model.state_dict().values() if isinstance(t, torch.Tensor)]
    return out + [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]


def bare_copy_seconds(tensors: list[torch.Tensor], repeats: int) -> float:
    """Median time of a bare copy of ``tensors`` into reused host buffers (pinned for device
    tensors): the floor of any snapshot that copies, fi-dist's included."""
    cuda = any(t.device.type == "cuda" for t in tensors)
    bufs = [torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
            for t in tensors]
    times = []
    for _ in range(repeats + 1):  # the first copy faults the buffers in: not counted
        t0 = time.perf_counter()
        for b, t in zip(bufs, tensors, strict=True):
            b.copy_(t, non_blocking=t.device.type == "cuda")
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def random_bytes(n: int) -> memoryview:
    return memoryview(torch.randint(0, 256, (n,), dtype=torch.uint8).numpy())


def raw_write(data: memoryview, path: Path) -> float:
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - t0


def raw_read(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            f.read()
    return time.perf_counter() - t0


def newest_files(ckpt: Path, rank: int | None = None) -> list[Path]:
    """The newest complete checkpoint's files (those ``rank`` loads, when given)."""
    cand = layout.scan(Storage(str(ckpt)))[0][0]
    names = list(cand.manifest.files)
    if rank is not None:
        from fi_dist.runtime.checkpoint.sharded import writer_rank

        names = [n for n in names if (n.startswith("dcp/") and (writer_rank(n) == rank
                                                                 or n == "dcp/.metadata"))
                 or n == f"rank-{rank:05d}.safetensors"]
    return [Path(cand.path) / n for n in names]


def ratio_line(name: str, base: list[float], ours: list[float], goal: str,
               nbytes: int) -> dict[str, Any]:
    """Throughput ratio baseline_time / fi-dist_time: of the medians, the median of the
    per-repeat ratios, and best against best (the least disturbed run of each)."""
    b, o = statistics.median(base), statistics.median(ours)
    per = [x / y for x, y in zip(base, ours, strict=True)]
    print(f"   {name}: baseline {b:.3f}s ({nbytes / b / MiB:.0f} MiB/s), fi-dist {o:.3f}s "
          f"({nbytes / o / MiB:.0f} MiB/s): ratio {b / o:.2f}   (goal {goal}); median "
          f"per-repeat {statistics.median(per):.2f}, best-of {min(base) / min(ours):.2f}; "
          f"per-repeat {[round(x, 2) for x in per]}")
    return {"metric": name, "baseline_s": b, "fidist_s": o, "ratio": b / o, "goal": goal}


def pair(first: Any, second: Any, i: int) -> tuple[Any, Any]:
    """Run both, alternating which goes first (no systematic order effect)."""
    if i % 2:
        b = second()
        return first(), b
    a = first()
    return a, second()


# --- one rank ----------------------------------------------------------------------------------
def bench_one_rank(mb: int, repeats: int, root: Path, torch_save: bool) -> None:
    print(f"P5, 1 rank, {mb} MiB state (model + Adam) on {DEVICE}, median of {repeats}; "
          f"load {loadavg()}")
    model, opt = make_model(mb)
    ckdir = root / f"one-{mb}"
    ck = Checkpointer(str(ckdir), model=model, optimizer=opt, keep_last=1)
    ck.resume()
    ck.save(1, block=True)
    ck.wait()
    files = newest_files(ckdir)
    nbytes = sum(p.stat().st_size for p in files)
    data = random_bytes(nbytes)
    raws, syncs, stalls, tsaves = [], [], [], []
    ck.save(2, block=False)  # the first async save allocates its host buffers
    first_stall = ck.stall_seconds or 0.0
    ck.wait()
    def raw_once(data: memoryview = data) -> float:
        t = raw_write(data, root / "raw.bin")
        os.remove(root / "raw.bin")
        return t

    def save_once(step: int) -> float:
        t0 = time.perf_counter()
        ck.save(step, block=True)
        t = time.perf_counter() - t0
        ck.wait()  # retention of the previous checkpoint, outside the timed region
        return t

    for i in range(repeats):
        r, sv = pair(raw_once, lambda i=i: save_once(10 + 2 * i), i)
        raws.append(r)
        syncs.append(sv)
        ck.save(11 + 2 * i, block=False)
        stalls.append(ck.stall_seconds or 0.0)
        ck.wait()
        if torch_save:
            t0 = time.perf_counter()
            with open(root / "ts.pt", "wb") as f:
                torch.save({"m": model.state_dict(), "o": opt.state_dict()}, f)
                f.flush()
                os.fsync(f.fileno())
            tsaves.append(time.perf_counter() - t0)
            os.remove(root / "ts.pt")
    print(f"   {nbytes / MiB:.0f} MiB in {len(files)} files")
    ratio_line("save / raw fsync'd write", raws, syncs, ">= 0.9", nbytes)
    if tsaves:
        ratio_line("(torch.save + fsync / raw write)", raws, tsaves, "info", nbytes)
    stall, sync = statistics.median(stalls), statistics.median(syncs)
    copy = bare_copy_seconds(state_tensors(model, opt), repeats)
    print(f"   async stall {stall * 1000:.1f} ms / sync save {sync * 1000:.0f} ms = "
          f"{stall / sync:.3f}   (goal <= 0.05); best-of {min(stalls) / min(syncs):.3f}; "
          f"first async save (allocates host buffers) {first_stall * 1000:.0f} ms")
    print(f"   floor: a bare copy of the same tensors into reused buffers {copy * 1000:.1f} ms "
          f"({nbytes / copy / 1e9:.1f} GB/s) = {copy / sync:.3f} of the sync save; "
          f"stall / bare copy {stall / copy:.2f}")
    ck.close()
    del data

    files = newest_files(ckdir)
    nbytes = sum(p.stat().st_size for p in files)
    reads, loads = [], []
    dropped = True
    def read_once() -> float:
        nonlocal dropped
        dropped &= drop_caches()
        return raw_read(files)

    def load_once() -> float:
        nonlocal dropped
        fresh, fopt = make_model(mb, seed=1)
        dropped &= drop_caches()
        ck2 = Checkpointer(str(ckdir), model=fresh, optimizer=fopt)
        t0 = time.perf_counter()
        ck2.resume()
        t = time.perf_counter() - t0
        ck2.close()
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters(),
                                                     strict=True))
        return t

    for i in range(repeats):
        r, ld = pair(read_once, load_once, i)
        reads.append(r)
        loads.append(ld)
    cache = "page cache dropped before each" if dropped else "page cache NOT dropped (not root)"
    print(f"   load: {cache}; load {loadavg()}")
    ratio_line("resume / raw read of the same files", reads, loads, ">= 0.9", nbytes)


# --- two ranks (FSDP2 + DCP) ---------------------------------------------------------------
def worker(out: str, mb: int, repeats: int, root: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def build(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        n = int(mb * 2**20 / 4 / 3)
        model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024, bias=False)
                                      for _ in range(max(1, n // (1024 * 1024)))])
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        _materialise(model, opt)
        return model, opt

    def timed(fn: Any) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        return time.perf_counter() - t0

    model, opt = build(0)
    ckdir = root / f"two-{mb}"
    ck = Checkpointer(str(ckdir), model=model, optimizer=opt, keep_last=1)
    ck.resume()
    ck.save(1, block=True)
    ck.wait()
    dist.barrier()
    mine = newest_files(ckdir, rank)
    nbytes = sum(p.stat().st_size for p in mine)
    data = random_bytes(nbytes)
    raws: list[float] = []
    saves: list[float] = []
    def raw_once(data: memoryview = data) -> float:
        t = timed(lambda: raw_write(data, root / f"raw-{rank}.bin"))
        os.remove(root / f"raw-{rank}.bin")
        return t

    def save_once(step: int) -> float:
        t = timed(lambda: ck.save(step, block=True))
        ck.wait()
        return t

    for i in range(repeats):
        r, sv = pair(raw_once, lambda i=i: save_once(10 + i), i)
        raws.append(r)
        saves.append(sv)
    total = torch.tensor([nbytes])
    dist.all_reduce(total)
    ck.close()
    del data
    dist.barrier()
    mine = newest_files(ckdir, rank)
    reads: list[float] = []
    loads: list[float] = []
    dropped = True
    def read_once() -> float:
        nonlocal dropped
        if rank == 0:
            dropped &= drop_caches()
        return timed(lambda: raw_read(mine))

    def load_once() -> float:
        nonlocal dropped
        fresh, fopt = build(1)
        if rank == 0:
            dropped &= drop_caches()
        ck2 = Checkpointer(str(ckdir), model=fresh, optimizer=fopt)
        t = timed(ck2.resume)
        ck2.close()
        return t

    for i in range(repeats):
        r, ld = pair(read_once, load_once, i)
        reads.append(r)
        loads.append(ld)
    read_bytes = torch.tensor([sum(p.stat().st_size for p in mine)])
    dist.all_reduce(read_bytes)
    if rank == 0:
        Path(out).write_text(json.dumps({"raws": raws, "saves": saves, "nbytes": int(total.item()),
                                         "reads": reads, "loads": loads, "dropped": dropped,
                                         "read_bytes": int(read_bytes.item())}))
    dist.barrier()
    dist.destroy_process_group()


def bench_two_ranks(mb: int, repeats: int, root: Path) -> None:
    print(f"P5, 2 ranks writing at once (FSDP2, DCP), {mb} MiB state in all, median of "
          f"{repeats}; load {loadavg()}")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = root / f"two-{mb}.json"
    procs = []
    for r in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
               "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "GLOO_SOCKET_IFNAME": "lo",
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(out), "--mb",
                                       str(mb), "--repeats", str(repeats), "--dir", str(root)],
                                      env=env, stdout=subprocess.DEVNULL))
    codes = [p.wait() for p in procs]
    if codes != [0, 0]:
        print(f"   2-rank workers failed: exit codes {codes}")
        return
    res = json.loads(out.read_text())
    ratio_line("save / raw fsync'd writes (both ranks at once)", res["raws"], res["saves"],
               ">= 0.9", res["nbytes"])
    cache = ("page cache dropped before each" if res["dropped"]
             else "page cache NOT dropped (not root)")
    print(f"   load: {cache}; load {loadavg()}")
    ratio_line("resume / raw read of the same files (both ranks)", res["reads"], res["loads"],
               ">= 0.9", res["read_bytes"])


# --- P6 --------------------------------------------------------------------------------------
def bench_p6(trials: int, root: Path, step_time: float) -> None:
    print(f"P6 over {trials} SIGTERMs at random times, step {step_time * 1000:.0f} ms; "
          f"load {loadavg()}")
    ratios, lost = [], []
    for t in range(trials):
        random.seed(t)
        model, opt = make_model(16)
        d = root / f"p6-{t}"
        ck = Checkpointer(str(d), model=model, optimizer=opt, every=5)
        done = [0]
        sent: list[float] = []

        def preempt(sent: list[float] = sent) -> None:
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGTERM)

        timer = threading.Timer(random.uniform(1.0, 2.5), preempt)
        timer.start()
        committed_step = None
        try:
            for step in ck.steps(10_000):
                time.sleep(step_time)  # the "training step"
                done[0] = step + 1
        except SystemExit:
            committed_step = ck.last_saved
        elapsed = time.perf_counter() - sent[0]
        at_signal = done[0]
        unit = step_time + (ck.save_seconds or 0.0)
        ratios.append(elapsed / unit)
        lost.append(max(0, at_signal - (committed_step or 0)))
    print(f"   SIGTERM -> committed / (one step + one save): median {statistics.median(ratios):.2f}, "
          f"max {max(ratios):.2f}   (goal <= 1)")
    print(f"   steps lost: max {max(lost)}   (goal <= 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=int, nargs="+", default=[128])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--preempt-trials", type=int, default=5)
    p.add_argument("--step-time", type=float, default=0.2)
    p.add_argument("--torch-save", action="store_true", help="also time plain torch.save")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the 1-rank model lives (the 2-rank bench is CPU / gloo)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a.worker, a.mb[0], a.repeats, Path(a.dir))
        return
    global DEVICE
    DEVICE = a.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    if a.dir is not None and not Path(a.dir).is_dir():
        p.error(f"--dir {a.dir}: not a directory")
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for mb in a.mb:
            if 1 in a.ranks:
                bench_one_rank(mb, a.repeats, Path(tmp), a.torch_save)
            if 2 in a.ranks:
                bench_two_ranks(mb, a.repeats, Path(tmp))
        if a.preempt_trials:
            bench_p6(a.preempt_trials, Path(tmp), a.step_time)
    print(f"load at the end {loadavg()}")


if __name__ == "__main__":
    main()
