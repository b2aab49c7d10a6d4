"""Shared fixtures: run the real CLI in a scratch directory, find ../shared/crds."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parent.parent
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
    return [sys.executable, "-m", "fi_dist.cli", *args]


@pytest.fixture(autouse=True)
def _fresh_contract():
    """Each test reads the job contract from its own environment (it is cached per process)."""
    from fi_dist import contract

    contract.reset_current()
    yield
    contract.reset_current()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory (its .fi-dist/ holds the run directories)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def run_cli(workdir: Path):
    """Run ``fi-dist ARGS`` as a real subprocess in ``workdir``; returns a CliResult."""

    def _run(*args: str, timeout: float = 180, env: dict[str, str] | None = None) -> CliResult:
        full_env = {**os.environ, **(env or {})}
        p = subprocess.run(fi_dist_cmd(*args), cwd=workdir, capture_output=True, text=True,
                           timeout=timeout, env=full_env)
        return CliResult(p.returncode, p.stdout, p.stderr)

    return _run


@pytest.fixture(scope="session")
def crds_dir() -> Path:
    """../shared/crds (the real CRD schemas); a clear failure when it is absent."""
    path = REPO.parent / "shared" / "crds"
    if not path.is_dir():
        pytest.fail(f"CRD schemas not found at {path}: tests validate manifests against "
                    "../shared/crds beside the checkout")
    return path
