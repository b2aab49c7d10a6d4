"""Placeholder until the JSONC writer lands: delegates to the runtime's writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_launch_json(config: dict[str, Any], path: Path) -> Path:
    from fi_dist.runtime.debug.launchjson import write_launch_json as write

    return write(path.parent.parent, config)
