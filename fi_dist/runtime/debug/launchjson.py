"""Where the hub publishes the attach configuration: launch.json and the run's debug.json.

The configuration itself and the launch.json writer are shared with the client side
(:mod:`fi_dist.launchjson`); this module adds the run directory's ``debug.json``, from
which ``fi-dist attach --print`` prints the same object (:meth:`RunDir.debug_config`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fi_dist.launchjson import (
    PRIVATE_MODE,
    LaunchJsonError,
    attach_configurations,
    write_configurations,
)
from fi_dist.rundir import RunDir, write_json

log = logging.getLogger("fi_dist.debug.hub")

def publish(config: dict[str, Any], cwd: Path | None, run_dir: Path | None,
            rank_port: int) -> None:
    """Write launch.json (in node 0's working directory) and the run dir's debug.json.

    launch.json gets ``config`` (type ``fi-dist``) and its ``debugpy`` twin
    (:func:`~fi_dist.launchjson.attach_configurations`); debug.json keeps ``config``.

    A launch.json that cannot be edited is left as it is with a warning: the job runs on,
    and ``fi-dist attach --print`` still prints the configuration.
    """
    if cwd is not None:
        try:
            write_configurations(cwd, attach_configurations(config))
        except (LaunchJsonError, OSError) as exc:
            log.warning("fi-dist debug hub: launch.json not updated: %s", exc)
    if run_dir is not None:
        write_json(RunDir(run_dir).debug_file, {"config": config, "rank_port": rank_port},
                   mode=PRIVATE_MODE)
