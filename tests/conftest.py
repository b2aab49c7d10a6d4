"""Shared fixtures: run the real CLI in a scratch directory, find ../shared/crds, and start
and tear down debug jobs. Helpers are imported as the package ``tests.support``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.cli import REPO, CliResult, fi_dist_cmd
from tests.support.debug_job import DebugJob, StandaloneHub
from tests.support.hang_job import HangJob

J = TypeVar("J", DebugJob, HangJob)


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


def _jobs(tmp_path: Path, kind: type[J]) -> Iterator[Callable[..., J]]:
    """A starter of ``kind`` jobs in ``tmp_path``; every job it started is stopped after."""
    jobs: list[J] = []

    def start(nnodes: int, nproc: int, env: dict[str, str], extra: tuple[str, ...] = ()) -> J:
        job = kind(tmp_path, nnodes, nproc, env, extra=extra)
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        job.stop()


@pytest.fixture
def debug_job(tmp_path: Path) -> Iterator[Callable[..., DebugJob]]:
    """Start ``fi-dist run --debug`` jobs in ``tmp_path``; every one is stopped afterwards.

    ``debug_job(nnodes, nproc, env, extra=())`` returns the running :class:`DebugJob`.
    """
    yield from _jobs(tmp_path, DebugJob)


@pytest.fixture
def hang_job(tmp_path: Path) -> Iterator[Callable[..., HangJob]]:
    """Start ``fi-dist run`` of the hang job in ``tmp_path``; every one is stopped afterwards.

    ``hang_job(nnodes, nproc, env, extra=())`` returns the running :class:`HangJob`.
    """
    yield from _jobs(tmp_path, HangJob)


@pytest.fixture
def standalone_hub(tmp_path: Path) -> Iterator[Callable[..., StandaloneHub]]:
    """Start hub processes with light ranks (``standalone_hub(**kwargs)``); all stopped after."""
    hubs: list[StandaloneHub] = []

    def start(**kwargs: object) -> StandaloneHub:
        hub = StandaloneHub(tmp_path, **kwargs)  # type: ignore[arg-type]
        hubs.append(hub)
        return hub

    yield start
    for hub in hubs:
        hub.stop()
