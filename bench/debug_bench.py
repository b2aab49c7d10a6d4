"""Debug hub benchmarks (numbers in docs/debug.md).

* **P1** step time of a DDP job under ``fi-dist run --debug`` with a client attached (no
  breakpoint hit) / the same job under plain torchrun, interleaved in the same run.
* **P3** one attach -> every rank stopped at a breakpoint, for 16 (4 nodes x 4) and 64
  light debuggee ranks (debugpy + the hub agent, no torch work) behind one hub.
* **P4** first rank stopped -> all ranks stopped: a breakpoint only the last rank
  reaches; the others are paused by the hub.

    .venv/bin/python bench/debug_bench.py --p1 --p34 16 64

Times are measured at the client (what a user sees), with ``time.perf_counter``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # bench scripts use the tests' helpers (tests.support)

from tests.support.dap_client import JobClient  # noqa: E402
from tests.support.debug_job import StandaloneHub, marker_line  # noqa: E402

P1_SCRIPT = '''\
import os, statistics, time
import torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
dist.init_process_group("gloo")
torch.manual_seed(0)
model = DDP(nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
times = []
for step in range(int(os.environ.get("STEPS", "300"))):
    t = time.perf_counter()
    x = torch.randn(64, 256)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
    if step < 0:
        never = step  # P1-NEVER-LINE
dist.barrier()
if dist.get_rank() == 0:
    print(f"median step ms: {statistics.median(times[50:]) * 1000:.3f}", flush=True)
dist.destroy_process_group()
'''


def _step_ms(output: str) -> float:
    found = re.findall(r"median step ms: ([0-9.]+)", output)
    if not found:
        raise RuntimeError(f"no step time in output:\n{output[-2000:]}")
    return float(found[-1])


def p1_plain(script: Path, work: Path) -> float:
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", str(script)], cwd=work, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return _step_ms(out.stdout + out.stderr)


def p1_debug(script: Path, work: Path, trace: str = "lazy",
             breakpoint_line: int | None = None) -> float:
    """``fi-dist run --debug`` with a client attached for the whole run (no stop)."""
    vscode = work / ".vscode" / "launch.json"
    vscode.unlink(missing_ok=True)
    log = work / "p1.log"
    proc = subprocess.Popen([sys.executable, "-m", "fi_dist.cli", "run", "--plain",
                             "--nproc-per-node", "2", "--master-port", "0", "--debug",
                             "--debug-port", "0", "--debug-trace", trace, "--wait-for-client",
                             str(script)], cwd=work, stdout=log.open("w"),
                            stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    while not vscode.exists():
        time.sleep(0.2)
    import json

    config = next(c for c in json.loads(vscode.read_text())["configurations"]
                  if c["name"] == "fi-dist: attach all ranks")
    bps = {str(script): [breakpoint_line]} if breakpoint_line else None
    # VSCode's defaults for debugpy: the "Uncaught Exceptions" filter on, others off.
    client = JobClient(config, breakpoints=bps, exception_filters=["uncaught"])
    client.attach()
    client.wait_children(2, timeout=120)
    proc.wait(600)
    client.close()
    return _step_ms(log.read_text())


def run_p1(reps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        script = work / "p1_train.py"
        script.write_text(P1_SCRIPT)
        never = marker_line(script, "P1-NEVER-LINE")
        variants = {
            "fi-dist --debug + client (lazy tracing, the default)":
                lambda: p1_debug(script, work),
            "  ... + a breakpoint set that is never hit (tracing on)":
                lambda: p1_debug(script, work, breakpoint_line=never),
            "  ... --debug-trace eager (tracing from the first line)":
                lambda: p1_debug(script, work, trace="eager"),
        }
        plain: list[float] = []
        runs: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(reps):  # interleaved, so drift in machine load hits all alike
            plain.append(p1_plain(script, work))
            for name, run in variants.items():
                runs[name].append(run())
        base = statistics.median(plain)
        print(f"P1 step time (median of per-run medians), goal <= 1.03:\n"
              f"  torchrun (baseline)  {base:.3f} ms  runs {plain}", flush=True)
        for name, values in runs.items():
            med = statistics.median(values)
            print(f"  {name}  {med:.3f} ms  ratio {med / base:.3f}  runs {values}",
                  flush=True)


def run_p34(world: int, reps: int, sleep: float) -> None:
    os.environ["LIGHT_SLEEP"] = str(sleep)  # the light ranks' loop: work(), then sleep
    print(f"light ranks loop every {sleep * 1000:g} ms", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        hub = StandaloneHub(Path(tmp))
        try:
            hub.start_ranks(world, per_node=4)
            work_line = marker_line(hub.script, "LIGHT-WORK-LINE")
            last_line = marker_line(hub.script, "LIGHT-LAST-LINE")
            _wait_registered(hub, world)
            p3, p4 = _p34_session(hub, world, work_line, last_line, reps)
            print(f"P3 {world} ranks ({world // 4} nodes x 4): attach -> all stopped "
                  f"{p3:.3f} s", flush=True)
            print(f"P4 {world} ranks: first stopped -> all stopped median "
                  f"{statistics.median(p4) * 1000:.1f} ms  "
                  f"runs {[round(v * 1000, 1) for v in p4]}", flush=True)
        finally:
            hub.stop()


def _wait_registered(hub: StandaloneHub, world: int, timeout: float = 900) -> None:
    # A throwaway attach: every rank announced and its adapter up, so P3 times the attach
    # itself and not the ranks' start (debugpy.listen spawns an adapter per rank).
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        client = JobClient(hub.config)
        client.attach()
        try:
            client.wait_children(world, timeout=60)
            return
        except Exception:
            continue
        finally:
            client.close()
            time.sleep(2.0)
    raise RuntimeError(f"{world} ranks never all connected")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_by_role(hub: StandaloneHub) -> dict[str, float]:
    """CPU seconds so far of the hub, the ranks, the debugpy adapters and this client."""
    adapters = []  # debugpy daemonizes its adapters (parent: init), so find them by name
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"debugpy/adapter" in cmd and b"--for-server" in cmd:
                adapters.append(int(entry.name))
    return {"hub": _cpu_seconds(hub.proc.pid),
            "ranks": sum(_cpu_seconds(p.pid) for p in hub.ranks),
            "adapters": sum(_cpu_seconds(p) for p in adapters),
            "client": _cpu_seconds(os.getpid())}


def _drain(children: dict) -> None:
    for child in children.values():
        while not child.events.empty():
            child.events.get_nowait()


def _p34_session(hub: StandaloneHub, world: int, work_line: int, last_line: int,
                 reps: int) -> tuple[float, list[float]]:
    """P3 once (one attach), then P4 ``reps`` times in the same session."""
    path = str(hub.script)
    t0 = time.perf_counter()
    client = JobClient(hub.config, breakpoints={path: [work_line]})
    client.attach()
    children = client.wait_children(world, timeout=300)
    stops = {r: c.wait_event("stopped", timeout=300) for r, c in children.items()}
    p3 = max(s["_t"] for s in stops.values()) - t0
    last = world - 1
    client.root.request("setBreakpoints", {"source": {"path": path}, "breakpoints": []})
    for c in children.values():
        c.request("setBreakpoints", {"source": {"path": path}, "breakpoints": []})
    children[last].request("continue", {"threadId": stops[last]["body"]["threadId"]})
    p4 = []
    before = _cpu_by_role(hub)
    for _ in range(reps):
        time.sleep(1.0)
        _drain(children)
        children[last].request("setBreakpoints", {"source": {"path": path},
                                                  "breakpoints": [{"line": last_line}]})
        stops = {r: c.wait_event("stopped", timeout=120) for r, c in children.items()}
        assert stops[last]["body"]["reason"] == "breakpoint"
        p4.append(max(s["_t"] for s in stops.values()) - stops[last]["_t"])
        children[last].request("setBreakpoints", {"source": {"path": path}, "breakpoints": []})
        children[last].request("continue", {"threadId": stops[last]["body"]["threadId"]})
    after = _cpu_by_role(hub)
    # Where the CPU goes per rank stop (a stop/continue cycle of one rank), to tell the
    # serial part (hub, client) from what a real cluster runs on every node in parallel.
    per_stop = {k: (after[k] - before[k]) / (reps * world) * 1000 for k in after}
    print(f"P4 {world} ranks: CPU ms per rank per stop/continue cycle (incl. the 1 s "
          f"between reps): " + ", ".join(f"{k} {v:.2f}" for k, v in per_stop.items()),
          flush=True)
    client.close()
    return p3, p4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--p1", action="store_true", help="run the step-time overhead benchmark")
    p.add_argument("--p1-reps", type=int, default=3)
    p.add_argument("--p34", type=int, nargs="*", default=[], metavar="RANKS",
                   help="run P3/P4 with these rank counts (e.g. 16 64)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--light-sleep", type=float, default=0.001, metavar="SECONDS",
                   help="sleep per loop of a light rank (64 ranks at 1 ms keep 2 cores busy)")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}, python {sys.version.split()[0]}")
    if args.p1:
        run_p1(args.p1_reps)
    for world in args.p34:
        run_p34(world, args.reps, args.light_sleep)


if __name__ == "__main__":
    main()
