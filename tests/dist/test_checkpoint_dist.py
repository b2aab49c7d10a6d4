"""Checkpointer across real gloo ranks (separate processes): agreement, side channel, kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fi_dist.runtime.checkpoint import Checkpointer, layout
from fi_dist.runtime.checkpoint.storage import Storage

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import argparse, hashlib, json, os, random, signal, sys, time
    import numpy as np, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from fi_dist.runtime.checkpoint import Checkpointer

    p = argparse.ArgumentParser()
    p.add_argument("ckpt"); p.add_argument("out"); p.add_argument("--total", type=int, default=8)
    p.add_argument("--every", type=int, default=0); p.add_argument("--width", type=int, default=32)
    p.add_argument("--sigterm-rank", type=int, default=-1); p.add_argument("--sigterm-at", type=int, default=-1)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(a.width, a.width), torch.nn.Tanh(), torch.nn.Linear(a.width, 1))
    ddp = DDP(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ck = Checkpointer(a.ckpt, model=ddp, optimizer=opt, scheduler=sched, every=a.every)
    random.seed(100 + rank); np.random.seed(100 + rank)  # a restart must not need these
    result = {"rank": rank, "start": ck.resume(), "seen_in_step": None}
    try:
        for step in ck.steps(a.total):
            # Per-rank torch, python and numpy streams: all restored on resume.
            x = torch.randn(8, a.width) * random.uniform(0.5, 1.5) + float(np.random.rand())
            loss = ddp(x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
            if step == a.sigterm_at and rank == a.sigterm_rank:
                os.kill(os.getpid(), signal.SIGTERM)
            elif step == a.sigterm_at:
                time.sleep(1.5)  # a long step: the notice must arrive through the store
                result["seen_in_step"] = ck.preempted
            with open(a.out + ".progress", "w") as f:
                f.write(str(step))
    finally:
        h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters()))
        for st in opt.state.values():
            h.update(st["exp_avg_sq"].numpy().tobytes())
        h.update(repr(sched.state_dict()).encode())
        result["checksum"] = h.hexdigest()
        with open(a.out, "w") as f:
            json.dump(result, f)
''')


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(tmp: Path, name: str, ckpt: Path, world: int, *args: str,
                worker: str = WORKER) -> list[subprocess.Popen]:
    """Start ``world`` real rank processes of ``worker``; each writes ``<name>.<rank>.json``."""
    script = tmp / f"worker-{name}.py"
    script.write_text(worker)
    port = _port()
    procs = []
    for r in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_RANK": str(r),
               "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "FI_DIST_RUN_DIR": ""}
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(ckpt), str(tmp / f"{name}.{r}.json"), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def finish(procs: list[subprocess.Popen], tmp: Path, name: str, timeout: float = 120) -> list[dict]:
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outs.append(out)
    results = []
    for r, p in enumerate(procs):
        f = tmp / f"{name}.{r}.json"
        assert f.exists(), f"rank {r} exit {p.returncode} wrote no result:\n{outs[r][-3000:]}"
        results.append({**json.loads(f.read_text()), "exitcode": p.returncode, "log": outs[r]})
    return results


@pytest.mark.timeout(240)
def test_sigterm_on_one_rank_all_ranks_save_same_step_and_resume_bit_exact(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    # The uninterrupted reference runs beside the preempted run (process start dominates).
    ref_procs = start_ranks(tmp_path, "ref", tmp_path / "ref-ckpt", 2, "--total", "8")
    pre = finish(start_ranks(tmp_path, "pre", ckpt, 2, "--total", "8", "--sigterm-rank", "1",
                             "--sigterm-at", "3"), tmp_path, "pre")
    ref = finish(ref_procs, tmp_path, "ref")
    assert [r["exitcode"] for r in ref] == [0, 0], ref[0]["log"][-2000:]
    assert [r["exitcode"] for r in pre] == [143, 143], pre[0]["log"][-2000:] + pre[1]["log"][-2000:]
    # Rank 0 never got a signal; it learned of rank 1's while still inside its long step.
    assert pre[0]["seen_in_step"] is True
    complete, rejected = layout.scan(Storage(str(ckpt)))
    assert [c.step for c in complete] == [4] and not rejected
    assert {"model.safetensors", "optimizer.safetensors", "rank-00000.safetensors",
            "rank-00001.safetensors"} <= set(
        complete[0].manifest.files)
    assert complete[0].manifest.meta["reason"] == "preemption"

    post = finish(start_ranks(tmp_path, "post", ckpt, 2, "--total", "8"), tmp_path, "post")
    assert [r["exitcode"] for r in post] == [0, 0], post[0]["log"][-2000:]
    assert [r["start"] for r in post] == [4, 4]
    assert [r["checksum"] for r in post] == [r["checksum"] for r in ref]


@pytest.mark.timeout(240)
def test_damaged_file_of_one_rank_both_ranks_fall_back_to_the_previous_checkpoint(
        tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ref_procs = start_ranks(tmp_path, "ref", tmp_path / "ref-ckpt", 2, "--total", "6")
    first = finish(start_ranks(tmp_path, "first", ckpt, 2, "--total", "4", "--every", "2"),
                   tmp_path, "first")
    ref = finish(ref_procs, tmp_path, "ref")
    assert [r["exitcode"] for r in first + ref] == [0, 0, 0, 0], first[0]["log"][-2000:]
    # Only rank 1 reads its own file: it alone sees the damage, the agreement moves both.
    victim = ckpt / layout.step_dirname(4) / "rank-00001.safetensors"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x10
    victim.write_bytes(bytes(data))
    post = finish(start_ranks(tmp_path, "post", ckpt, 2, "--total", "6"), tmp_path, "post")
    assert [r["exitcode"] for r in post] == [0, 0], post[0]["log"][-2000:]
    assert [r["start"] for r in post] == [2, 2]
    assert f"{victim}: checksum mismatch" in post[0]["log"]
    assert [r["checksum"] for r in post] == [r["checksum"] for r in ref]


def verify_complete(ckpt: Path) -> int:
    """Every complete checkpoint reads back with matching checksums; the newest's step."""
    storage = Storage(str(ckpt))
    complete, _ = layout.scan(storage)
    for cand in complete:
        for name, entry in cand.manifest.files.items():
            path = f"{cand.path}/{name}"
            layout.verify(entry, storage.read_bytes(path), path)
    return complete[0].step if complete else 0


TRIALS = 3


@pytest.mark.timeout(240)
def test_kill9_during_save_next_start_loads_a_complete_checkpoint(tmp_path: Path) -> None:
    """A few trials side by side; bench/fault_kill_during_save.py runs many."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    trials = []
    for t in range(TRIALS):
        d = tmp_path / f"t{t}"
        d.mkdir()
        # every=1 with ~4 MB of model + Adam state: a save is in flight most of the time.
        procs = start_ranks(d, "run", d / "ckpt", 2, "--total", "10000", "--every", "1",
                            "--width", "700")
        trials.append((d, procs, rng.uniform(0.0, 2.0), rng.randrange(2)))
    for d, procs, delay, victim in trials:
        progress = d / "run.0.json.progress"
        deadline = time.monotonic() + 150
        while not progress.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(procs[victim].pid, signal.SIGKILL)
    for _d, procs, _, _ in trials:
        time.sleep(0.2)
        for p in procs:  # the survivor blocks on its dead peer: end it the same way
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.communicate()
    for d, _, delay, victim in trials:
        why = f"seed {seed}, trial {d.name}, delay {delay:.2f}s, victim rank {victim}"
        step = verify_complete(d / "ckpt")
        assert step > 0, why
        # The next start (one process here: model + optimizer, checksums checked) loads it.
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(700, 700), torch.nn.Tanh(),
                                    torch.nn.Linear(700, 1))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        ck = Checkpointer(str(d / "ckpt"), model=model, optimizer=opt)
        try:
            assert ck.resume() == step, why
        finally:
            ck.close()
        assert not list((d / "ckpt").glob(f"{layout.TMP_PREFIX}*")), why
