"""The attach configuration: ``.vscode/launch.json`` and the run directory's debug.json.

VSCode sends a configuration's fields as the ``attach`` arguments, so the one
configuration named :data:`CONFIG_NAME` (debugpy, attach, connect, the job token as
``fiDistToken``, ``justMyCode: false``) is all a user needs. ``fi-dist attach --print``
prints the same object from the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fi_dist.rundir import read_json, write_json

log = logging.getLogger("fi_dist.debug.hub")

CONFIG_NAME = "fi-dist: attach all ranks"
"""The launch.json configuration the hub writes (and replaces on every run)."""
DEBUG_FILE = "debug.json"
"""In the run directory: the attach config plus the hub's rank port."""


def attach_config(host: str, port: int, token: str) -> dict[str, Any]:
    """The VSCode/debugpy attach configuration that reaches every rank through the hub."""
    return {
        "name": CONFIG_NAME,
        "type": "debugpy",
        "request": "attach",
        "connect": {"host": host, "port": port},
        "justMyCode": False,
        "fiDistToken": token,
    }


def write_launch_json(cwd: Path, config: dict[str, Any]) -> Path:
    """Add or replace our configuration in ``cwd/.vscode/launch.json``, keeping the others."""
    path = cwd / ".vscode" / "launch.json"
    data: dict[str, Any] = {"version": "0.2.0", "configurations": []}
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict) and isinstance(loaded.get("configurations"), list):
                data = loaded
        except ValueError:
            # launch.json allows comments; a file we cannot parse is kept aside, not lost.
            path.rename(path.with_suffix(".json.bak"))
            log.warning("%s is not plain JSON; kept as launch.json.bak", path)
    data["configurations"] = [c for c in data["configurations"]
                              if not (isinstance(c, dict) and c.get("name") == CONFIG_NAME)]
    data["configurations"].append(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    return path


def publish(config: dict[str, Any], cwd: Path | None, run_dir: Path | None,
            rank_port: int) -> None:
    """Write launch.json (in node 0's working directory) and the run dir's debug.json."""
    if cwd is not None:
        try:
            write_launch_json(cwd, config)
        except OSError as exc:
            log.warning("cannot write .vscode/launch.json in %s: %s", cwd, exc)
    if run_dir is not None:
        write_json(run_dir / DEBUG_FILE, {"config": config, "rank_port": rank_port})


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """The attach configuration a run's hub published, or None before the hub is up."""
    data = read_json(run_dir / DEBUG_FILE)
    return data.get("config") if data else None
