"""Running the real ``fi-dist`` command in tests."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def fi_dist_cmd(*args: str) -> list[str]:
    """``fi-dist ARGS`` as a command line, with this interpreter."""
    return [sys.executable, "-m", "fi_dist.cli", *args]
