"""The hang doctor's costs: `fi-dist stacks` latency, and the training step's overhead.

    python bench/hang_bench.py [--stacks 16 64] [--ddp] [--calls] [--reps 5]

* ``--stacks N``: N light ranks (no torch: the ledger and the dump thread of fi-dist's
  rank runtime in a loop that sleeps 1 ms, like the P3 bench's light debuggees), rank 3
  "behind", the others "in all_reduce #2". Measures the collection itself (signal every
  rank, wait for every answer, merge, diagnose: ``collect()``) and the whole
  ``fi-dist stacks`` command (a new Python process: imports, run lookup, printing).
* ``--ddp``: examples/ddp_train.py on 2 gloo ranks under plain torchrun (the baseline)
  and under torchrun with fi-dist's rank runtime (``-m fi_dist.runtime.rank_main``: the
  collective ledger, the dump thread and the Flight Recorder on), interleaved; step time
  from the script's own ``done: N steps in T s``. Also the runtime with the Flight
  Recorder off (``TORCH_FR_BUFFER_SIZE=0``) to show its share.
* ``--calls``: the wrapper's cost per collective call (a 1-rank gloo group in this
  process, ``all_reduce`` of one float), wrapped vs not.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from harness import interleave, report

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = str(REPO / "examples" / "ddp_train.py")
_DONE = re.compile(r"done: (\d+) steps in ([0-9.]+)s")

LIGHT_RANK = '''\
import os, threading, time
from pathlib import Path
from fi_dist.hang.ledger import Ledger, ensure_hang_dir, ledger_path
from fi_dist.runtime.hang.dumper import StackDumper

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
d = ensure_hang_dir(Path(os.environ["FI_DIST_RUN_DIR"]) / "hang")
led = Ledger(ledger_path(d, rank), rank, rank // 4, rank % 4, world,
             threading.main_thread().ident)
StackDumper(d, rank, led).install()
off = led.slot("default")
led.issue(off, 1, 0, b"all_reduce", b"/bench/light.py", 20, b"step")
led.complete(off, 1)


def load_batch():
    while True:
        time.sleep(0.001)


def all_reduce():
    while True:
        time.sleep(0.001)


def step():
    if rank == 3:
        load_batch()
    else:
        led.issue(off, 2, 1, b"all_reduce", b"/bench/light.py", 30, b"step")
        all_reduce()


step()
'''


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def stacks_latency(n: int, reps: int) -> None:
    from fi_dist.hang.collect import collect
    from fi_dist.hang.ledger import read_ledgers

    before = _load()  # before the light ranks add their own load
    with tempfile.TemporaryDirectory() as cwd:
        run = Path(cwd) / ".fi-dist" / "runs" / "bench-run"
        run.mkdir(parents=True, mode=0o700)
        (run / "run.json").write_text(f'{{"launcher": "local", "pid": {os.getpid()}}}')
        (Path(cwd) / ".fi-dist" / "current").write_text("bench-run")
        script = Path(cwd) / "light.py"
        script.write_text(LIGHT_RANK)
        procs = [subprocess.Popen([sys.executable, str(script)], cwd=cwd,
                                  env={**os.environ, "RANK": str(r), "WORLD_SIZE": str(n),
                                       "FI_DIST_RUN_DIR": str(run)})
                 for r in range(n)]
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                ledgers = read_ledgers(run / "hang")
                if len(ledgers) == n and all(v.ready for v in ledgers.values()):
                    break
                time.sleep(0.2)
            time.sleep(1.0)

            def in_process() -> dict[str, float]:
                rep = collect(run / "hang", "bench-run")
                assert all(d.source == "python" for d in rep.dumps), rep.text()
                assert rep.diagnosis.kind == "behind", rep.diagnosis.text
                return {f"collect() {n} ranks (s)": rep.elapsed}

            def command() -> dict[str, float]:
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "fi_dist.cli", "stacks"], cwd=cwd,
                                     capture_output=True, text=True, timeout=60)
                wall = time.perf_counter() - t0
                assert out.returncode == 0 and "rank 3 is behind" in out.stdout, out
                return {f"fi-dist stacks {n} ranks (s)": wall}

            loads = [before]
            res = interleave(reps, {"collect": in_process, "cli": command})
            loads.append(_load())
            for series in (*res["collect"].values(), *res["cli"].values()):
                vals = ", ".join(f"{v:.3f}" for v in series.values)
                print(f"{series.name:<32} median {series.median:.3f}  ({vals})  "
                      f"load before {loads[0]}, after {loads[1]}")
        finally:
            for p in procs:
                p.kill()
                p.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(entry: list[str], steps: int, extra_env: dict[str, str]) -> dict[str, float]:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **extra_env}
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--rdzv-backend",
         "static", *entry, EXAMPLE, "--steps", str(steps)],
        env=env, capture_output=True, text=True, timeout=600)
    times = [float(m.group(2)) / int(m.group(1)) for m in _DONE.finditer(p.stdout + p.stderr)]
    # torch 2.13's gloo sometimes aborts a rank at interpreter exit, after the script's
    # last line ("terminate called without an active exception": 1 in 20-40 runs here,
    # plain torchrun as often as fi-dist's runtime): the steps were timed all the same.
    if p.returncode != 0 and (len(times) != 2 or "terminate called" not in p.stderr):
        raise RuntimeError(p.stdout[-3000:] + p.stderr[-3000:])
    assert len(times) == 2, p.stdout
    return {"step time (ms)": 1000 * statistics.mean(times)}


def ddp_overhead(reps: int, steps: int) -> None:
    hang_dir = Path(tempfile.gettempdir()) / f"fi-dist-{os.geteuid()}" / "hang-bench"
    runs = {
        "torchrun": lambda: _torchrun([], steps, {}),
        "fi-dist rank": lambda: _torchrun(["-m", "fi_dist.runtime.rank_main"], steps,
                                          {"FI_DIST_RUN_ID": "hang-bench"}),
        "no recorder": lambda: _torchrun(["-m", "fi_dist.runtime.rank_main"], steps,
                                         {"FI_DIST_RUN_ID": "hang-bench",
                                          "TORCH_FR_BUFFER_SIZE": "0"}),
    }
    loads = [_load()]
    res = interleave(reps, runs)
    loads.append(_load())
    shutil.rmtree(hang_dir, ignore_errors=True)
    print(report(res, "torchrun", "fi-dist rank", {"step time (ms)": "<= 1.01"}))
    print(report(res, "torchrun", "no recorder", {}))
    base = res["torchrun"]["step time (ms)"].values
    for name, series in res.items():
        vals = series["step time (ms)"].values
        pairs = statistics.median(v / b for v, b in zip(vals, base, strict=True))
        print(f"  {name:<14} {', '.join(f'{v:.3f}' for v in vals)}   median per-rep ratio "
              f"{pairs:.3f}, best {min(vals):.3f} (best ratio {min(vals) / min(base):.3f})")
    print(f"load average {loads[0]} -> {loads[1]}")


FR_CALLS = '''\
import sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
x, calls, best = torch.ones(1), int(sys.argv[1]), float("inf")
for _ in range(7):
    t0 = time.perf_counter()
    for _ in range(calls):
        dist.all_reduce(x)
    best = min(best, (time.perf_counter() - t0) / calls * 1e6)
print(best)
'''


def call_cost(calls: int) -> None:
    """Per-call costs, best of 7 (load only ever adds time): the wrapper, the recorder."""
    import torch
    import torch.distributed as dist

    from fi_dist.hang.ledger import Ledger
    from fi_dist.runtime.hang import collectives

    with tempfile.TemporaryDirectory() as d:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        x = torch.ones(1)

        def timed() -> float:
            t0 = time.perf_counter()
            for _ in range(calls):
                dist.all_reduce(x)
            return (time.perf_counter() - t0) / calls * 1e6

        plain, wrapped = [], []
        led = Ledger(Path(d) / "0.ledger", 0, 0, 0, 1, threading.main_thread().ident or 0)
        for _ in range(7):
            plain.append(timed())
            collectives.install(led)
            wrapped.append(timed())
            collectives.uninstall()
        dist.destroy_process_group()
        script = Path(d) / "fr.py"
        script.write_text(FR_CALLS)
        fr: dict[str, list[float]] = {"0": [], "2000": []}
        for _ in range(3):
            for size in fr:
                out = subprocess.run([sys.executable, str(script), str(calls)], text=True,
                                     capture_output=True, timeout=300, check=True,
                                     env={**os.environ, "TORCH_FR_BUFFER_SIZE": size})
                fr[size].append(float(out.stdout.split()[-1]))
    p, w = min(plain), min(wrapped)
    print(f"all_reduce of 1 float, 1-rank gloo, best of 7 x {calls} calls: plain {p:.2f} us, "
          f"with fi-dist's ledger {w:.2f} us (+{w - p:.2f} us per call); load {_load()}")
    off, on = min(fr["0"]), min(fr["2000"])
    print(f"the same, Flight Recorder off {off:.2f} us, on (2000 entries) {on:.2f} us "
          f"(+{on - off:.2f} us per collective); load {_load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--stacks", type=int, nargs="*", default=None)
    ap.add_argument("--ddp", action="store_true")
    ap.add_argument("--calls", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    if args.stacks is None and not args.ddp and not args.calls:
        args.stacks, args.ddp, args.calls = [16, 64], True, True
    for n in args.stacks or []:
        stacks_latency(n, args.reps)
    if args.calls:
        call_cost(20000)
    if args.ddp:
        ddp_overhead(args.reps, args.steps)


if __name__ == "__main__":
    main()
