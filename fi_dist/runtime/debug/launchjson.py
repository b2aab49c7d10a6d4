"""Where the hub publishes the attach configuration: launch.json and the run's debug.json.

The configuration itself and the launch.json writer are shared with the client side
(:mod:`fi_dist.launchjson`); this module adds the run directory's ``debug.json``, from
which ``fi-dist attach --print`` prints the same object.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fi_dist.launchjson import PRIVATE_MODE, LaunchJsonError, write_configuration
from fi_dist.rundir import read_json, write_json

log = logging.getLogger("fi_dist.debug.hub")

DEBUG_FILE = "debug.json"
"""In the run directory: the attach config plus the hub's rank port (0600: the token)."""


def publish(config: dict[str, Any], cwd: Path | None, run_dir: Path | None,
            rank_port: int) -> None:
    """Write launch.json (in node 0's working directory) and the run dir's debug.json.

    A launch.json that cannot be edited is left as it is with a warning: the job runs on,
    and ``fi-dist attach --print`` still prints the configuration.
    """
    if cwd is not None:
        try:
            write_configuration(cwd, config)
        except (LaunchJsonError, OSError) as exc:
            log.warning("fi-dist debug hub: launch.json not updated: %s", exc)
    if run_dir is not None:
        write_json(run_dir / DEBUG_FILE, {"config": config, "rank_port": rank_port},
                   mode=PRIVATE_MODE)


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The attach configuration a run's hub published, or None before the hub is up."""
    data = read_json(run_dir / DEBUG_FILE)
    return data.get("config") if data else None
