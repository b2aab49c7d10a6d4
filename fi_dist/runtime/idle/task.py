"""The culler inside a task: the host for pods with no node agent (the Flyte decorator).

A Flyte task's pod runs flytekit's entrypoint, not fi-dist's node agent, so
``@interactive_pytorch`` hosts the node's :class:`~.watcher.IdleWatcher` itself: the
pod's local rank 0 runs it in a thread, over a run directory of the pod (the job's, under
``fi-dist run``; else a private one every rank of the pod finds by the same name), where
each rank's session records its pid and the debugger and steps leave their activity.

Ending the task the way FlyteInteractive's ``max_idle_seconds`` does, with a message
Flyte shows: when the watcher stops the node, every rank of the pod gets SIGTERM (the
checkpoint request: a :class:`~fi_dist.Checkpointer` saves and exits 143), and a rank
without one raises :class:`IdleCulledError` in its main thread, so flytekit fails the
task with that message (an Elastic task's agent reports it as the worker's error). The
message also goes to the container's termination log (``/dev/termination-log``), which
Flyte shows for a pod that ends any other way; what is left after the grace period is
SIGKILLed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fi_dist import contract, rundir
from fi_dist import env_vars as ev
from fi_dist.rundir import RunDir
from fi_dist.runtime.environment import RankEnvironment
from fi_dist.runtime.idle.notify import notifiers_from_spec
from fi_dist.runtime.idle.sampler import make_sampler
from fi_dist.runtime.idle.watcher import IdleWatcher
from fi_dist.spec import IdleSpec

log = logging.getLogger("fi_dist.idle")

TERMINATION_LOG = Path("/dev/termination-log")
"""Where Kubernetes reads a container's termination message (terminationMessagePath)."""


class IdleCulledError(RuntimeError):
    """The idle culler ended this task: nobody used it for the whole window."""


def pod_run_dir(env: RankEnvironment, run_key: str) -> RunDir:
    """The run directory this pod's ranks share: the job's when a launcher made one,
    else a private directory named after the run and the node (0700, under the temp
    directory), which the process's contract then names (``FI_DIST_RUN_DIR``)."""
    job = contract.current()
    if job.run_dir:
        return RunDir(Path(job.run_dir))
    digest = hashlib.sha256(run_key.encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir()) / f"fi-dist-{os.getuid()}"
    path = rundir.private_dir(base / f"task-{digest}-node{env.node_rank}")
    os.environ[ev.FI_DIST_RUN_DIR] = str(path)
    contract.reset_current()
    from fi_dist.runtime import heartbeat

    heartbeat.reset_current()
    return RunDir(path)


class TaskCuller:
    """One rank's part: every rank handles the end; the pod's local rank 0 also watches."""

    def __init__(self, spec: IdleSpec, env: RankEnvironment, run_dir: RunDir,
                 grace: float, job_activity: Callable[[], float | None] | None = None,
                 termination_log: Path = TERMINATION_LOG, owns_run_dir: bool = False) -> None:
        self.spec = spec
        self.owns_run_dir = owns_run_dir
        """The run directory is this pod's own (no launcher made one): removed when the
        pod's ranks all ended, unless it records a cull."""
        self.env = env
        self.run_dir = run_dir
        self.grace = grace
        self.job_activity = job_activity
        self.termination_log = termination_log
        self.watcher: IdleWatcher | None = None
        self._previous: Any = None
        self._main = threading.main_thread().ident or 0

    # --- every rank ------------------------------------------------------------------
    def culled(self) -> str | None:
        """Why this pod's culler ended it (None: it did not)."""
        data = self.run_dir.node_idle().get(self.env.node_rank)
        if data and data.get("ended_at") is not None and not data.get("dry_run"):
            return str(data.get("reason") or "idle")
        return None

    def message(self, reason: str) -> str:
        return (f"fi-dist: the idle culler ended this task on {self.env.label()}: {reason}; "
                "no device use, training step, debugger or code-server activity for the "
                f"whole {self.spec.timeout:g}s window (@interactive_pytorch "
                "max_idle_seconds)")

    def install(self) -> None:
        """SIGTERM raises :class:`IdleCulledError` once this pod was culled (main thread
        only: where Python runs signal handlers); any other SIGTERM (a pod's deletion, a
        preemption) does what it did before."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if (reason := self.culled()) is not None:
            raise IdleCulledError(self.message(reason))
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
            return
        if previous == signal.SIG_IGN:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the default: end the process
        os.kill(os.getpid(), signal.SIGTERM)

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    # --- the pod's local rank 0 ---------------------------------------------------------
    def start(self) -> TaskCuller:
        """Install the handler; on the pod's local rank 0 also start watching the pod."""
        self.install()
        if self.env.local_rank == 0:
            self.watcher = IdleWatcher(
                self.spec, self.run_dir, self.env.node_rank, make_sampler(self.spec.sampler),
                notifiers_from_spec(self.spec), grace=self.grace, kill=self._kill,
                after_end=self._after_end, job_activity=self.job_activity)
            self.watcher.start()
        return self

    def _kill(self, pid: int, sig: int) -> None:
        if pid == os.getpid() and sig == signal.SIGTERM:
            self._write_termination_log()
            # This process's main thread runs the task: raise there, not in this thread.
            signal.pthread_kill(self._main, sig)
            return
        os.kill(pid, sig)

    def _write_termination_log(self) -> None:
        # Kubernetes mounts the file into the container; nothing is created elsewhere.
        if self.termination_log.is_file():
            with contextlib.suppress(OSError):
                self.termination_log.write_text(self.message(self.culled() or "idle") + "\n")

    def _after_end(self) -> None:
        log.warning("fi-dist idle: %s: the task was ended (%s)", self.env.label(),
                    self.culled() or "idle")

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        self.uninstall()
        # Removed by the pod's last rank to end; kept when it records a cull (a restarted
        # worker group reads it).
        if not self.owns_run_dir or self.culled() is not None:
            return
        mine = [d for d in self.run_dir.ranks().values() if d.get("node") == self.env.node_rank]
        if (len(mine) >= self.env.local_world_size
                and all(d.get("state") in ("exited", "failed") for d in mine)):
            shutil.rmtree(self.run_dir.path, ignore_errors=True)
