"""Start the hub process beside rank 0 (node 0's agent, the Flyte session, a Ray actor).

The hub is its own process so that rank 0 being paused (or busy in a collective)
never stops it from serving the IDE and the other ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from fi_dist import env_vars as ev
from fi_dist.contract import HUB_READY, DebugSettings, hub_command
from fi_dist.procs import ReadyProcess, StartError, start_ready


class HubStartError(RuntimeError):
    """The hub could not start (port taken, bad address); its output says why."""


@dataclass
class HubProcess:
    """A running hub and the ports it listens on."""

    process: ReadyProcess
    ide_port: int
    rank_port: int

    def stop(self) -> None:
        """End the hub (the job is over)."""
        self.process.stop()


def start(debug: DebugSettings, rank_host: str, run_dir: str | None = None,
          cwd: str | None = None, timeout: float = 30.0) -> HubProcess:
    """Start the hub for ``debug`` with its rank port on ``rank_host``.

    Raises:
        HubStartError: the hub did not come up; the message carries its output.
    """
    env = {**os.environ, **debug.to_env()}
    if run_dir:
        env[ev.FI_DIST_RUN_DIR] = run_dir
    try:
        proc = start_ready(hub_command(rank_host), HUB_READY, env=env, cwd=cwd, timeout=timeout)
    except StartError as exc:
        raise HubStartError(f"the fi-dist debug hub did not start: {exc}") from None
    _, ide_port, rank_port = proc.ready.split()
    return HubProcess(proc, int(ide_port), int(rank_port))
