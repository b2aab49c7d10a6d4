"""Debug jobs for the tests and benches: a training job to debug, a running ``--debug``
job, and a standalone hub with light ranks.

The DAP client the tests drive them with is :mod:`tests.support.dap_client`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fi_dist import procs

JOB_SCRIPT = '''\
"""Deterministic gloo job; JOB_MODE picks what happens at step 2."""
import hashlib, os, sys, time
from datetime import timedelta

import torch
import torch.distributed as dist

import fi_dist


def spin(seconds):
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
    return n


def explode(rank):
    local_marker = rank * 7
    raise ValueError(f"boom on rank {rank}")  # RAISE-LINE


def main():
    modes = set(os.environ.get("JOB_MODE", "none").split(","))
    raise_step = int(os.environ.get("JOB_RAISE_STEP", "2"))
    timeout = timedelta(seconds=float(os.environ.get("JOB_TIMEOUT", "120")))
    dist.init_process_group("gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    x = torch.arange(4, dtype=torch.float64) + rank
    if "loop" in modes:  # run until the test drops JOB_RELEASE; x is untouched
        print(f"rank {rank} loop tracing: {sys.gettrace() is not None}", flush=True)
        i = 0
        while True:  # all ranks agree on leaving, or the collectives would mismatch
            done = torch.tensor([float(os.path.exists(os.environ["JOB_RELEASE"]))])
            dist.all_reduce(done)
            if done.item() > 0:
                break
            spin(0.02)
            looped = i  # LOOP-LINE
            i += 1
    for step in range(5):
        dist.all_reduce(x)
        x = x / world + step
        if step == 2 and "break" in modes:
            if rank == world - 1:
                last_rank_only = step * 10  # LAST-RANK-LINE
            else:
                spin(float(os.environ.get("JOB_HOLD", "20")))  # OTHERS-SPIN-LINE
        elif step == 2 and "rank_bp" in modes:
            fi_dist.breakpoint(rank=int(os.environ.get("JOB_BP_RANK", "1")))  # RANK-BP-LINE
            after_breakpoint = step
        elif step == 2 and "all_bp" in modes:
            fi_dist.breakpoint()  # ALL-BP-LINE
            after_breakpoint = step
        if step == raise_step and "raise" in modes and rank == int(os.environ.get("JOB_RAISE_RANK", "1")):
            time.sleep(float(os.environ.get("JOB_RAISE_DELAY", "0")))  # peers reach all_reduce
            explode(rank)
    dist.barrier()
    if rank == 0:
        digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
        print(f"final checksum: {digest}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
'''


def write_job(directory: Path) -> Path:
    path = directory / "debug_job.py"
    path.write_text(JOB_SCRIPT)
    return path


def marker_line(script: Path, marker: str) -> int:
    for n, text in enumerate(script.read_text().splitlines(), 1):
        if marker in text:
            return n
    raise AssertionError(f"{marker} not in {script}")


def checksum(output: str) -> str:
    found = re.findall(r"final checksum: ([0-9a-f]+)", output)
    assert found, f"no checksum in the job output:\n{output[-3000:]}"
    return found[-1]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fi_dist.cli", *args]


class BackgroundJob:
    """``fi-dist run --plain SCRIPT`` in the background, its output in ``log``."""

    def __init__(self, workdir: Path, script: Path, log: Path, nnodes: int, nproc: int,
                 env: dict[str, str], extra: tuple[str, ...] = ()) -> None:
        self.workdir, self.script, self.log = workdir, script, log
        argv = cli("run", "--plain", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc),
                   "--master-port", "0", *extra, str(script))
        self.proc = subprocess.Popen(argv, cwd=workdir, env={**os.environ, **env},
                                     stdout=log.open("w"), stderr=subprocess.STDOUT)

    def run_dir(self) -> Path:
        run_id = (self.workdir / ".fi-dist" / "current").read_text().strip()
        return self.workdir / ".fi-dist" / "runs" / run_id

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                procs.terminate(self.run_dir().name, grace=3.0)
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class DebugJob(BackgroundJob):
    """``fi-dist run --debug`` in the background; ``config`` is launch.json's entry."""

    def __init__(self, workdir: Path, nnodes: int, nproc: int, env: dict[str, str],
                 extra: tuple[str, ...] = ()) -> None:
        super().__init__(workdir, write_job(workdir), workdir / "job.log", nnodes, nproc, env,
                         ("--debug", "--debug-port", "0", *extra))
        self.config = self._wait_config()

    def _wait_config(self, timeout: float = 120) -> dict[str, Any]:
        path = self.workdir / ".vscode" / "launch.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists():
                data = json.loads(path.read_text())
                return next(c for c in data["configurations"]
                            if c["name"] == "fi-dist: attach all ranks")
            if self.proc.poll() is not None:
                raise AssertionError(f"job ended before the hub was up:\n{self.output()}")
            time.sleep(0.2)
        raise AssertionError(f"no launch.json after {timeout}s:\n{self.output()}")

    def status(self) -> dict[str, Any]:
        out = subprocess.run(cli("status", "--json"), cwd=self.workdir, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def rank_states(self) -> dict[int, str]:
        return {row["rank"]: row["state"] for row in self.status()["ranks"]}

    def wait_states(self, pred: Any, timeout: float = 30) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        states: dict[int, str] = {}
        while time.monotonic() < deadline:
            states = self.rank_states()
            if pred(states):
                return states
            time.sleep(0.3)
        raise AssertionError(f"rank states never matched: {states}")


LIGHT_RANK = '''\
"""A light debuggee: one rank's debug runtime (debugpy + hub agent) without torch work."""
import os
import select
import time
import types
import warnings

from fi_dist import contract
from fi_dist.runtime.debug import agent
from fi_dist.runtime.environment import RankEnvironment

agent.start(RankEnvironment.from_env(), contract.current().debug)


def work(i):
    x = i * 2  # LIGHT-WORK-LINE
    return x


def _noisy_attr(name):
    warnings.warn(f"noisy.{name} is deprecated", FutureWarning, stacklevel=2)
    return 1


noisy = types.ModuleType("noisy")  # every attribute warns, like torch.distributed's
noisy.__getattr__ = _noisy_attr
noisy.__dir__ = lambda: ["alpha", "beta"]

LAST = int(os.environ["RANK"]) == int(os.environ["WORLD_SIZE"]) - 1
if os.environ.get("LIGHT_BLOCK") and not LAST:
    select.select([], [], [], 3600)  # LIGHT-BLOCK-LINE: in native code, like a collective
i = 0
while True:
    i = work(i) % 1000 + 1
    if LAST:
        last_only = i  # LIGHT-LAST-LINE
    time.sleep(float(os.environ.get("LIGHT_SLEEP", "0.001")))
'''


def light_rank_env(rank: int, world: int, per_node: int, rank_port: int,
                   token: str, master_addr: str = "127.0.0.1") -> dict[str, str]:
    """The env torchrun would give rank ``rank``, plus the hub's address and token."""
    return {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank % per_node), "LOCAL_WORLD_SIZE": str(per_node),
            "GROUP_RANK": str(rank // per_node), "TORCHELASTIC_RUN_ID": "light",
            "MASTER_ADDR": master_addr, "MASTER_PORT": "29500",
            "FI_DIST_DEBUG": "1", "FI_DIST_DEBUG_RANK_PORT": str(rank_port),
            "FI_DIST_DEBUG_TOKEN": token, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}


class StandaloneHub:
    """``python -m fi_dist.runtime.debug.hub`` on free loopback ports, plus light ranks."""

    def __init__(self, workdir: Path, token: str = "t" * 32,
                 wrap: list[str] | None = None, rank_host: str = "127.0.0.1",
                 ide_port: int = 0) -> None:
        """``wrap``: a command the hub runs under (e.g. ``prlimit --nofile=1024:1024``, or
        entering node 0's namespace); ``rank_host``: the address of its rank port."""
        self.workdir = workdir
        self.token = token
        from fi_dist.contract import DebugSettings, hub_command

        settings = DebugSettings(token=token, ide_port=ide_port, rank_port=0)
        env = {**os.environ, **settings.to_env(), "FI_DIST_RUN_DIR": str(workdir)}
        self.proc = subprocess.Popen([*(wrap or []), *hub_command(rank_host)], cwd=workdir,
                                     env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        for text in self.proc.stdout:
            self.lines.append(text)
            if text.startswith("fi-dist-hub-ready"):
                _, ide, rank = text.split()
                self.ide_port, self.rank_port = int(ide), int(rank)
                break
        else:
            raise AssertionError("hub did not start:\n" + "".join(self.lines))
        import threading

        threading.Thread(target=self._drain, daemon=True).start()
        self.script = workdir / "light_rank.py"
        self.script.write_text(LIGHT_RANK)
        self.ranks: list[subprocess.Popen[bytes]] = []

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            self.lines.append(text)

    @property
    def config(self) -> dict[str, Any]:
        from fi_dist.launchjson import attach_config

        return attach_config("127.0.0.1", self.ide_port, self.token)

    def start_ranks(self, world: int, per_node: int = 4, rank_port: int | None = None,
                    master_addr: str = "127.0.0.1",
                    wrap: Callable[[int], list[str]] | None = None,
                    env: dict[str, str] | None = None) -> None:
        """``world`` light ranks dialling the hub (or ``rank_port``, e.g. a fake hub's).

        ``wrap(node)``: a command node ``node``'s ranks run under (its namespace);
        ``env``: more variables (``LIGHT_BLOCK=1``: all but the last sit in native code).
        """
        per_node = min(per_node, world)
        for r in range(world):
            env_r = {**light_rank_env(r, world, per_node, rank_port or self.rank_port,
                                      self.token, master_addr), **(env or {})}
            prefix = wrap(r // per_node) if wrap is not None else []
            self.ranks.append(subprocess.Popen([*prefix, sys.executable, str(self.script)],
                                               env=env_r,
                                               cwd=self.workdir, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        for p in [*self.ranks, self.proc]:
            if p.poll() is None:
                p.kill()
            p.wait()
