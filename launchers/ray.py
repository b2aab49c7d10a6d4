"""Ray launcher: every rank is a Ray actor in one placement group.

One bundle per spec node (``nproc_per_node`` CPU or GPU slots), spread over the Ray
nodes; bundle 0 is pinned to the head node, so rank 0 and the debug hub land where
a KubeRay RayJob declares the hub port. Each rank actor owns exactly one rank
process, ``python -m fi_dist.runtime.rank_main SCRIPT ...``, started with torchrun's
env (RANK, LOCAL_RANK, WORLD_SIZE, GROUP_RANK, MASTER_ADDR = rank 0's node, ...)
plus fi-dist's, so debugging and checkpoint hooks run exactly as under the local
launcher and torch.distributed (gloo on CPU) forms among the actors.

Why a process per actor rather than the script inside the actor's own worker: a
Ray worker is not a main-thread program (SIGTERM handlers for preemption need the
main thread), Ray installs its own ``breakpoint()`` debugger in workers (RAY_DEBUG
defaults to 1 in Ray 2.60), and a process group must die with its rank, which a
reused worker would not.

A Ray node that disappears (preemption) kills its actors; the launcher then ends
the attempt and, within ``max_restarts``, starts the job again: the script resumes
from its last checkpoint (FI_DIST_CKPT_DIR).

``python -m fi_dist.launchers.ray SPEC_JSON`` is the entry point a KubeRay RayJob runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fi_dist import env_vars as ev
from fi_dist import rundir
from fi_dist.errors import ConfigError, LauncherError
from fi_dist.launcher import DryRun, JobState, JobStatus, Launcher
from fi_dist.spec import JobSpec

if TYPE_CHECKING:
    from fi_dist.launchers.ray_job import RayRun

HEAD_RESOURCE = "node:__internal_head__"
PREEMPTED_EXIT = 143
# Keep a Ray started here small and on loopback (see docs/launchers.md).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
LOCAL_OBJECT_STORE_BYTES = 80 * 1024 * 1024


@dataclass
class RankPlan:
    rank: int
    node: int
    local_rank: int


@dataclass
class RayRequest:
    spec: JobSpec
    bundles: list[dict[str, float]]
    ranks: list[RankPlan]
    env: dict[str, str] = field(default_factory=dict)


def plan(spec: JobSpec) -> RayRequest:
    """Bundles (one per spec node) and the rank layout; no Ray needed."""
    if spec.resources.gpus and spec.nproc_per_node > spec.resources.gpus:
        raise ConfigError(f"nproc_per_node: {spec.nproc_per_node} ranks per node but "
                          f"resources.gpus={spec.resources.gpus}: one GPU per rank")
    slot = {"GPU": 1.0} if spec.resources.gpus else {"CPU": 1.0}
    bundles = [{k: v * spec.nproc_per_node for k, v in slot.items()}
               for _ in range(spec.nnodes)]
    bundles[0][HEAD_RESOURCE] = 0.001
    ranks = [RankPlan(n * spec.nproc_per_node + lr, n, lr)
             for n in range(spec.nnodes) for lr in range(spec.nproc_per_node)]
    env = dict(spec.env)
    env.update({ev.FI_DIST_LAUNCHER: "ray", ev.FI_DIST_GRACE_PERIOD: str(spec.grace_period)})
    if spec.checkpoint_uri:
        env[ev.FI_DIST_CKPT_DIR] = spec.checkpoint_uri
    return RayRequest(spec, bundles, ranks, env)


def rank_env(req: RayRequest, r: RankPlan, master: tuple[str, int], node_addr: str,
             attempt: int) -> dict[str, str]:
    """torchrun's per-rank variables plus fi-dist's, for rank ``r`` on ``node_addr``."""
    spec = req.spec
    env = dict(req.env)
    env.update({
        ev.RANK: str(r.rank), ev.LOCAL_RANK: str(r.local_rank),
        ev.WORLD_SIZE: str(spec.world_size), ev.LOCAL_WORLD_SIZE: str(spec.nproc_per_node),
        ev.GROUP_RANK: str(r.node), ev.GROUP_WORLD_SIZE: str(spec.nnodes),
        ev.ROLE_RANK: str(r.rank), ev.MASTER_ADDR: master[0], ev.MASTER_PORT: str(master[1]),
        ev.FI_DIST_NODE_ADDR: node_addr, ev.FI_DIST_NODE_RANK: str(r.node),
        ev.FI_DIST_ATTEMPT: str(attempt), ev.PYTHONUNBUFFERED: "1",
    })
    if node_addr.startswith("127."):
        env.setdefault(ev.GLOO_SOCKET_IFNAME, "lo")  # a loopback-only Ray cluster
    return env


class RayLauncher(Launcher):
    name = "ray"

    def __init__(self, cwd: Path | None = None, out: Any = None) -> None:
        self.cwd = cwd or Path.cwd()
        self.out = out or sys.stdout

    def dryrun(self, spec: JobSpec) -> DryRun:
        req = plan(spec)
        doc = {
            "launcher": "ray",
            "address": os.environ.get("RAY_ADDRESS") or "local (ray.init on this machine)",
            "placement_group": {"strategy": "SPREAD", "bundles": req.bundles},
            "actors": [{"rank": r.rank, "node": r.node, "local_rank": r.local_rank,
                        "bundle": r.node,
                        "argv": ["python", "-m", "fi_dist.runtime.rank_main", spec.script,
                                 *spec.script_args]} for r in req.ranks],
            "env": req.env,
        }
        return DryRun(self.name, spec, req, [doc])

    def schedule(self, dryrun: DryRun) -> str:
        return self.run(dryrun).run_id

    def run(self, dryrun: DryRun) -> RayRun:
        address = os.environ.get("RAY_ADDRESS", "")
        if not address or address.startswith("127."):
            # Ray reads these when it is imported: set them first, so a Ray started
            # here listens on 127.0.0.1 only and writes no auth token file (and a
            # driver of a loopback cluster does not advertise the external interface).
            for key, value in LOCAL_RAY_ENV.items():
                os.environ.setdefault(key, value)
        from fi_dist.launchers.ray_job import RayRun  # imports ray

        job = RayRun(dryrun.request, rundir.create_run(self.cwd), self.out)
        job.run()
        return job

    def status(self, job_id: str) -> JobStatus:
        run = rundir.RunDir(rundir.root(self.cwd) / "runs" / job_id)
        info = run.read_run()
        if not info:
            return JobStatus(job_id, JobState.UNKNOWN, "no such run")
        return JobStatus(job_id, JobState(info.get("job_state", "unknown")),
                         exitcode=info.get("exitcode"), ranks=run.ranks())

    def logs(self, job_id: str, rank: int | None = None) -> Iterable[str]:
        log = rundir.root(self.cwd) / "runs" / job_id / "logs" / "ray.log"
        if not log.is_file():
            raise LauncherError(f"no log for run {job_id} at {log}")
        for line in log.read_text().splitlines():
            if rank is None or f" rank{rank}]" in line:
                yield line


def create_launcher() -> RayLauncher:
    return RayLauncher()


def main(argv: list[str] | None = None) -> int:
    """``python -m fi_dist.launchers.ray SPEC_JSON``: what a KubeRay RayJob runs."""
    from fi_dist.config import spec_from_dict

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fi_dist.launchers.ray SPEC_JSON", file=sys.stderr)
        return 2
    spec = spec_from_dict(json.loads(argv[0]), source="entrypoint")
    launcher = RayLauncher()
    return launcher.run(launcher.dryrun(spec)).exitcode


if __name__ == "__main__":
    sys.exit(main())
