"""R1 fault script: kill -9 a training process at random points while it saves, N times.

Every trial forks a child (torch is imported once, in the parent, so a trial costs
milliseconds, not an interpreter start) that trains and checkpoints EVERY step into a
shared directory, sync or async at random; the parent SIGKILLs it after a random delay,
then plays "the next start": a fresh Checkpointer resumes from that directory. A torn
load is any of: resume raising, resume returning a step whose files fail their
checksums, or a step older than the newest complete one. Goal: 1000 trials, 0 torn.

    python bench/fault_kill_during_save.py --trials 1000 [--mb 4] [--max-delay 0.3]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from fi_dist.runtime.checkpoint import Checkpointer, layout
from fi_dist.runtime.checkpoint.storage import Storage


def build(mb: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    width = max(8, int((mb * 2**20 / 4 / 3) ** 0.5))
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def child(ckpt: str, mb: float, seed: int, ready: int) -> None:
    rng = random.Random(seed)
    model, opt = build(mb)
    ck = Checkpointer(ckpt, model=model, optimizer=opt, keep_last=2,
                      async_save=rng.random() < 0.5)
    start = ck.resume()
    os.write(ready, b"1")  # the kill delay counts from here, not from fork
    for step in range(start, start + 10_000):
        loss = model(torch.randn(4, model.in_features)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ck.save(step + 1)
    os._exit(0)


def verify(ckpt: str, mb: float) -> tuple[bool, str]:
    storage = Storage(ckpt)
    complete, _ = layout.scan(storage)
    newest = complete[0].step if complete else 0
    model, opt = build(mb)
    ck = Checkpointer(ckpt, model=model, optimizer=opt)
    try:
        step = ck.resume()
    except Exception as exc:
        return False, f"resume raised {type(exc).__name__}: {exc}"
    finally:
        ck.close()
    if step != newest:
        return False, f"resumed step {step}, newest complete is {newest}"
    if complete:
        for name, entry in complete[0].manifest.files.items():
            path = f"{complete[0].path}/{name}"
            try:
                layout.verify(entry, storage.read_bytes(path), path)
            except layout.CheckpointError as exc:
                return False, str(exc)
    return True, f"step {step}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--mb", type=float, default=4.0, help="model + Adam state size")
    p.add_argument("--max-delay", type=float, default=0.3, help="max seconds before the kill")
    p.add_argument("--dir", default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    # Forked children must not inherit an OpenMP pool the parent started (GNU OpenMP
    # is not fork-safe): the parent stays single-threaded.
    torch.set_num_threads(1)
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    torn, loaded, midsave, what = 0, 0, 0, ""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        ckpt = str(Path(tmp) / "ckpt")
        for trial in range(a.trials):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(r)
                    child(ckpt, a.mb, rng.randrange(1 << 30) + trial, w)
                finally:
                    os._exit(1)
            os.close(w)
            os.read(r, 1)
            os.close(r)
            time.sleep(rng.uniform(0.0, a.max_delay))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            midsave += any(n.startswith(layout.TMP_PREFIX) for n in Storage(ckpt).listdir())
            ok, what = verify(ckpt, a.mb)
            loaded += ok
            if not ok:
                torn += 1
                print(f"trial {trial}: TORN LOAD: {what}", flush=True)
            if a.verbose:
                print(f"trial {trial}: {what}", flush=True)
            if (trial + 1) % 50 == 0:
                print(f"{trial + 1} trials, {torn} torn, {time.monotonic() - t0:.0f}s", flush=True)
    print(f"R1: {a.trials} kill -9 trials (seed {seed}): {torn} torn loads, "
          f"{loaded} clean resumes; {midsave} kills left a save half-written; last: {what}")
    return 1 if torn else 0


if __name__ == "__main__":
    sys.exit(main())
