"""Ray launcher: every rank is a Ray actor in one placement group.

One bundle per spec node (``nproc_per_node`` CPU or GPU slots), spread over the Ray
nodes; bundle 0 is pinned to the head node, so rank 0 and the debug hub land where
a KubeRay RayJob declares the hub port. Each rank actor owns exactly one rank
process, ``python -m fi_dist.runtime.rank_main SCRIPT ...``, started with torchrun's
env plus the job's contract, so debugging and checkpoint hooks run exactly as under
the local launcher and torch.distributed (gloo on CPU) forms among the actors.

Why a process per actor rather than the script inside the actor's own worker: a
Ray worker is not a main-thread program (SIGTERM handlers for preemption need the
main thread), Ray installs its own ``breakpoint()`` debugger in workers (RAY_DEBUG
defaults to 1 in Ray 2.60), and a process group must die with its rank, which a
reused worker would not.

This module is the client side and never imports ray; the driver that does
(:mod:`fi_dist.launchers.ray_driver`) runs the job under the common supervisor,
here or, for a KubeRay RayJob, inside the cluster:
``python -m fi_dist.launchers.ray SPEC_JSON`` is the RayJob's entrypoint.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from fi_dist import rundir
from fi_dist.console import PlainView
from fi_dist.contract import rank_command
from fi_dist.errors import ConfigError, LauncherError
from fi_dist.hang.report import Report
from fi_dist.launcher import (
    Attachment,
    DryRun,
    JobStatus,
    Launcher,
    run_attachment,
    run_stacks,
    run_status,
)
from fi_dist.spec import JobSpec

from .ray_plan import RayRequest, plan, prepare_local_ray


class RayLauncher(Launcher):
    name = "ray"

    def __init__(self, cwd: Path | None = None) -> None:
        self.cwd = cwd or Path.cwd()

    def dryrun(self, spec: JobSpec) -> DryRun:
        if spec.debug.code_server:
            # code-server runs beside the hub in node 0's agent; Ray ranks have none.
            raise ConfigError("--code-server needs node agents (--launcher local or "
                              "pytorchjob); on Ray, attach a desktop VSCode with the fi-dist "
                              "extension (`fi-dist vscode install`) to the hub instead")
        req = plan(spec)
        doc = {
            "launcher": "ray",
            "address": os.environ.get("RAY_ADDRESS") or "local (ray.init on this machine)",
            "placement_group": {"strategy": "SPREAD", "bundles": req.bundles},
            "actors": [{"rank": r.rank, "node": r.node, "local_rank": r.local_rank,
                        "bundle": r.node,
                        "argv": rank_command(spec.script, spec.script_args, "python",
                                             module=spec.module, no_python=spec.no_python)}
                       for r in req.ranks],
            "env": req.job.shown_env(),
        }
        return DryRun(self.name, spec, req, [doc])

    def schedule(self, dryrun: DryRun) -> str:
        raise LauncherError("the ray launcher runs jobs in the foreground (fi-dist run); "
                            "for a job that runs on its own use --launcher rayjob")

    def run(self, dryrun: DryRun, view: PlainView) -> int:
        prepare_local_ray()
        from . import ray_driver  # imports ray

        req: RayRequest = dryrun.request
        return ray_driver.supervise(req, rundir.create_run(self.cwd), view)

    def status(self, job_id: str) -> JobStatus:
        return run_status(rundir.root(self.cwd) / "runs" / job_id)

    def stacks(self, job_id: str, all_threads: bool = False) -> Report:
        # The ranks' ledgers are in the run directory: ranks on this machine (a local
        # Ray, or the head node of a cluster) answer; docs/hangs.md says the limits.
        return run_stacks(rundir.root(self.cwd) / "runs" / job_id, all_threads)

    def attach(self, job_id: str, local_port: int | None = None) -> Attachment:
        return run_attachment(rundir.root(self.cwd) / "runs" / job_id)

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
    return launcher.run(launcher.dryrun(spec), PlainView())


if __name__ == "__main__":
    sys.exit(main())
