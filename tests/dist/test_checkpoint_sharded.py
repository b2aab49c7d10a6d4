"""Checkpointer's sharded path (FSDP2 / DTensor through torch.distributed.checkpoint) on 2 gloo ranks."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from test_checkpoint_dist import finish, start_ranks

from fi_dist.runtime.checkpoint import layout
from fi_dist.runtime.checkpoint.storage import Storage

pytestmark = pytest.mark.slow

# FSDP2 runs on CPU + gloo: parameters and Adam state are DTensors sharded over the 2 ranks.
WORKER = textwrap.dedent("""
    import argparse, hashlib, json, os, random, sys
    import numpy as np, torch, torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from fi_dist.runtime.checkpoint import Checkpointer, CheckpointCorruptError

    p = argparse.ArgumentParser()
    p.add_argument("ckpt"); p.add_argument("out"); p.add_argument("--total", type=int, default=8)
    p.add_argument("--every", type=int, default=2); p.add_argument("--crash-at", type=int, default=-1)
    p.add_argument("--width", type=int, default=32)
    a = p.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, a.width), torch.nn.Tanh(),
                                torch.nn.Linear(a.width, 1))
    fully_shard(model[0]); fully_shard(model[2]); fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    ck = Checkpointer(a.ckpt, model=model, optimizer=opt, scheduler=sched, every=a.every)
    random.seed(100 + rank); np.random.seed(100 + rank)  # a restart must not need these
    try:
        result = {"rank": rank, "sharded": ck.sharded, "start": ck.resume()}
    except CheckpointCorruptError as exc:
        with open(a.out, "w") as f:
            json.dump({"rank": rank, "error": str(exc)}, f)
        # Not through the interpreter's teardown: with the gloo group still up it aborts
        # ("terminate called without an active exception") in about 1 exit of 5, whether
        # the load plan is made on a helper thread or not; destroy_process_group() first
        # does not help.
        sys.stdout.flush()
        os._exit(5)
    for step in ck.steps(a.total):
        # Per-rank torch, python and numpy streams: restored from the rank file on resume.
        x = torch.randn(8, 32) * random.uniform(0.5, 1.5) + float(np.random.rand())
        loss = model(x).pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step == a.crash_at:  # every rank dies after this step's update, before any save of it
            os._exit(3)
    # Gathered full state (collective): parameters and the Adam state of every parameter.
    h = hashlib.sha256()
    for name, prm in model.named_parameters():
        h.update(name.encode()); h.update(prm.detach().full_tensor().numpy().tobytes())
        for k, v in sorted(opt.state[prm].items()):
            v = v.full_tensor() if hasattr(v, "full_tensor") else v
            h.update(k.encode()); h.update(v.detach().reshape(-1).numpy().tobytes())
    h.update(repr(sched.state_dict()).encode())
    result["checksum"] = h.hexdigest()
    dist.barrier(); dist.destroy_process_group()
    with open(a.out, "w") as f:
        json.dump(result, f)
""")


def _reap(procs: list[subprocess.Popen]) -> None:
    """Leave no processes behind, whatever failed."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.communicate()


@pytest.mark.timeout(200)
def test_fsdp2_periodic_sharded_save_crash_resume_bit_exact(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    procs: list[subprocess.Popen] = []
    try:
        # The uninterrupted reference runs beside the run that crashes (process start dominates).
        ref_procs = start_ranks(
            tmp_path, "ref", tmp_path / "ref-ckpt", 2, "--total", "8", worker=WORKER
        )
        crash_procs = start_ranks(
            tmp_path, "crash", ckpt, 2, "--total", "8", "--crash-at", "4", worker=WORKER
        )
        procs += ref_procs + crash_procs
        ref = finish(ref_procs, tmp_path, "ref", timeout=90)
        assert [r["exitcode"] for r in ref] == [0, 0], ref[0]["log"][-2000:]
        assert [r["sharded"] for r in ref] == [True, True]
        for p in crash_procs:
            out, _ = p.communicate(timeout=90)
            assert p.returncode == 3, out[-3000:]

        # Saves after steps 2 and 4 committed through DCP; step 5 (done, unsaved) is lost.
        complete, rejected = layout.scan(Storage(str(ckpt)))
        assert [c.step for c in complete] == [4, 2] and not rejected
        for cand in complete:
            m = cand.manifest
            assert m.mode == "sharded" and m.meta["reason"] == "periodic"
            dcp_files = {f for f in m.files if f.startswith("dcp/")}
            assert {"dcp/.metadata", "dcp/__0_0.distcp", "dcp/__1_0.distcp"} <= dcp_files, m.files
            assert {"rank-00000.safetensors", "rank-00001.safetensors"} <= set(m.files)
            assert "model.safetensors" not in m.files  # sharded state is never gathered onto rank 0

        post_procs = start_ranks(tmp_path, "post", ckpt, 2, "--total", "8", worker=WORKER)
        procs += post_procs
        post = finish(post_procs, tmp_path, "post", timeout=90)
        assert [r["exitcode"] for r in post] == [0, 0], post[0]["log"][-2000:] + post[1]["log"][-2000:]
        assert [c.step for c in layout.scan(Storage(str(ckpt)))[0]] == [8, 6, 4]

        # A model the checkpoints do not fit (DCP's planner refuses it on every rank):
        # a clear error on both ranks, no hang, nothing deleted.
        shutil.copytree(ckpt, tmp_path / "misfit-ckpt")
        misfit_procs = start_ranks(tmp_path, "misfit", tmp_path / "misfit-ckpt", 2, "--total",
                                   "8", "--width", "48", worker=WORKER)
        procs += misfit_procs
        # A damaged shard of rank 1 (only rank 1 verifies it): both ranks fall back to 6.
        shard = ckpt / layout.step_dirname(8) / "dcp" / "__1_0.distcp"
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0x01
        shard.write_bytes(bytes(data))
        again_procs = start_ranks(tmp_path, "again", ckpt, 2, "--total", "8", worker=WORKER)
        procs += again_procs
        again = finish(again_procs, tmp_path, "again", timeout=90)
        misfit = finish(misfit_procs, tmp_path, "misfit", timeout=90)
    finally:
        _reap(procs)
    assert [r["start"] for r in post] == [4, 4]
    # Resumed = uninterrupted, bit for bit: full parameters AND full Adam state, on both ranks.
    assert len({r["checksum"] for r in ref}) == 1
    assert [r["checksum"] for r in post] == [r["checksum"] for r in ref]
    assert [r["exitcode"] for r in again] == [0, 0], again[0]["log"][-2000:]
    assert [r["start"] for r in again] == [6, 6]
    assert f"{shard}: checksum mismatch" in again[0]["log"]
    assert [r["checksum"] for r in again] == [r["checksum"] for r in ref]
    assert [r["exitcode"] for r in misfit] == [5, 5], misfit[0]["log"][-2000:]
    for r in misfit:
        assert r["error"].startswith("no loadable checkpoint"), r["error"]
        assert "48" in r["error"] and "32" in r["error"], r["error"]  # the sizes that differ
    assert [c.step for c in layout.scan(Storage(str(tmp_path / "misfit-ckpt")))[0]] == [8, 6, 4]


@pytest.mark.timeout(200)
def test_resume_on_another_world_size_reshards_bit_exact(tmp_path: Path) -> None:
    """2 ranks' shards into 1 rank, and 1 rank's into 2 (where rank 1 owns no shard file and
    reads byte ranges of rank 0's): full parameters and Adam state as saved."""
    procs: list[subprocess.Popen] = []
    try:
        two = start_ranks(tmp_path, "two", tmp_path / "ck2", 2, "--total", "4", worker=WORKER)
        one = start_ranks(tmp_path, "one", tmp_path / "ck1", 1, "--total", "4", worker=WORKER)
        procs += two + one
        saved = finish(two, tmp_path, "two", timeout=90) + finish(one, tmp_path, "one", timeout=90)
        assert [r["exitcode"] for r in saved] == [0, 0, 0], saved[0]["log"][-2000:]
        shrink = start_ranks(tmp_path, "shrink", tmp_path / "ck2", 1, "--total", "4", worker=WORKER)
        grow = start_ranks(tmp_path, "grow", tmp_path / "ck1", 2, "--total", "4", worker=WORKER)
        procs += shrink + grow
        resumed = (finish(shrink, tmp_path, "shrink", timeout=90)
                   + finish(grow, tmp_path, "grow", timeout=90))
    finally:
        _reap(procs)
    assert [r["exitcode"] for r in resumed] == [0, 0, 0], [r["log"][-2000:] for r in resumed]
    assert [r["start"] for r in resumed] == [4, 4, 4]
    assert resumed[0]["checksum"] == saved[0]["checksum"]  # 2 -> 1
    assert [r["checksum"] for r in resumed[1:]] == [saved[2]["checksum"]] * 2  # 1 -> 2


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_format1_sharded" / "ckpt"


@pytest.mark.timeout(150)
def test_format1_sharded_checkpoint_of_the_old_code_resumes_bit_exact(tmp_path: Path) -> None:
    """Written by the format-1 package (DCP's own files, sha256): DCP's reader loads it."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    procs: list[subprocess.Popen] = []
    try:
        ref_procs = start_ranks(tmp_path, "ref", tmp_path / "ref-ckpt", 2, "--total", "4",
                                worker=WORKER)
        post_procs = start_ranks(tmp_path, "post", ckpt, 2, "--total", "4", worker=WORKER)
        procs += ref_procs + post_procs
        ref = finish(ref_procs, tmp_path, "ref", timeout=120)
        post = finish(post_procs, tmp_path, "post", timeout=120)
    finally:
        _reap(procs)
    assert [r["exitcode"] for r in ref + post] == [0, 0, 0, 0], post[0]["log"][-2000:]
    assert [r["start"] for r in post] == [2, 2]
    assert [r["checksum"] for r in post] == [r["checksum"] for r in ref]
    complete, _ = layout.scan(Storage(str(ckpt)))
    assert [(c.step, c.manifest.format) for c in complete] == [(4, 2), (2, 1)]
