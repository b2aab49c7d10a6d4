"""The node agent: what one "pod" runs. ``python -m fi_dist.runtime.node_agent SCRIPT ...``.

Reads the node-level env a PyTorchJob pod gets (PET_*, MASTER_*), then starts
``nproc_per_node`` ranks with torchrun's semantics through torch.distributed.elastic
(static rendezvous, the same code path as ``torchrun``), each rank wrapped by
:mod:`fi_dist.runtime.rank_main`. Every rank's output is prefixed ``[nodeK rankR]``.
The per-rank outcome (exit code, pid, first error) goes to the run directory for the
launcher's summary.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fi_dist import contract
from fi_dist import env_vars as ev
from fi_dist.rundir import RunDir, write_json
from fi_dist.runtime import node_link
from fi_dist.runtime.environment import NodeEnvironment

log = logging.getLogger("fi_dist.node_agent")

IDE_LINGER = 2.0
"""Seconds the browser IDE stays up after the job (only with --code-server, once it is up)."""


def torchrun_args(node: NodeEnvironment, log_dir: Path | None, script_argv: list[str]) -> list[str]:
    """torchrun's command line for this node: static rendezvous on the master."""
    args = [
        "--nnodes", str(node.nnodes),
        "--nproc-per-node", str(node.nproc_per_node),
        "--node-rank", str(node.node_rank),
        "--master-addr", node.master_addr,
        "--master-port", str(node.master_port),
        "--rdzv-backend", "static",
        "--max-restarts", "0",
        "--monitor-interval", "0.1",
        "--local-addr", node.node_addr,
    ]
    if log_dir is not None:
        args += ["--log-dir", str(log_dir), "--redirects", "3", "--tee", "3"]
    return [*args, "-m", "fi_dist.runtime.rank_main", *script_argv]


def _failure_record(failure: Any) -> dict[str, Any]:
    return {
        "local_rank": failure.local_rank,
        "pid": failure.pid,
        "exitcode": failure.exitcode,
        "signal": failure.signal_name() if failure.exitcode < 0 else None,
        "message": _message(failure.message),
        "timestamp": failure.timestamp,
        "traceback": _traceback(failure),
    }


def _message(message: Any) -> str:
    # torchelastic keeps the error file's whole "message" object when it is a dict.
    if isinstance(message, dict):
        return str(message.get("message", message))
    return str(message)


def _traceback(failure: Any) -> str | None:
    extra = failure.error_file_data.get("message", {}) if failure.error_file_data else {}
    if isinstance(extra, dict):
        return extra.get("extraInfo", {}).get("py_callstack")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The operator sets PYTHONUNBUFFERED=0, which CPython reads as the integer 0, i.e.
    # buffered: rank lines tailed to a pipe would then reach the logs only at exit.
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    node = NodeEnvironment.from_env()
    job = contract.current()
    node_link.start(job, node.node_rank)  # heartbeats; stop with the launcher (local runs)
    run_dir = RunDir(Path(job.run_dir)) if job.run_dir else None
    os.environ.setdefault(
        ev.TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE, f"[node{node.node_rank} rank${{rank}}] "
    )
    os.environ[ev.FI_DIST_NODE_RANK] = str(node.node_rank)
    # torchrun sets this too, with a banner; one thread per rank is right for CPU ranks.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    log_dir = run_dir.logs / f"node{node.node_rank}" if run_dir else None
    if log_dir:
        log_dir.mkdir(parents=True, exist_ok=True)
    args = parse_args(torchrun_args(node, log_dir, argv))
    config, cmd, cmd_args = config_from_args(args)
    result: dict[str, Any] = {"node": node.node_rank, "started": time.time(), "failures": {}}
    code = 0
    from fi_dist.runtime import idle

    launched = threading.Event()

    def end_agent() -> None:
        # The ranks were ended; a launch still waiting (at rendezvous for a node that
        # never came: no rank to end) cannot be interrupted, so the agent ends here.
        if launched.wait(2.0) or culler is None:
            return
        result.update(exitcode=1, ended=time.time())
        code = culler.finish(result, 1)
        if run_dir:
            write_json(run_dir.node_file(node.node_rank), result)
        print(f"fi-dist: node {node.node_rank}: {result['error']}", file=sys.stderr, flush=True)
        os._exit(code)

    # None unless the job culls; its ranks then know this node is watched.
    culler = idle.start_for(job, run_dir, node.node_rank, after_end=end_agent)
    if culler is not None:
        os.environ[ev.FI_DIST_IDLE_WATCHER] = f"node agent {node.node_rank}"
    hub = None
    if job.debug is not None and node.node_rank == 0:  # the debug hub beside rank 0
        from fi_dist.runtime.debug import hub_process

        hub = hub_process.start(job.debug, node.node_addr, job.run_dir)
    ide = None
    if hub is not None and job.debug is not None and job.debug.code_server:
        from fi_dist.runtime import codeserver  # the browser IDE beside the hub

        ide = codeserver.Background(job.debug, Path.cwd(), job.run_dir)
    try:
        elastic_launch(config=config, entrypoint=cmd)(*cmd_args)
    except ChildFailedError as exc:
        result["failures"] = {str(r): _failure_record(f) for r, f in exc.failures.items()}
        code = 1
    except Exception as exc:  # SignalException from a SIGTERM to the agent, rendezvous errors
        result["error"] = f"{type(exc).__name__}: {exc}"
        sigval = getattr(exc, "sigval", None)
        code = 128 + int(sigval) if sigval is not None else 1
    finally:
        launched.set()
        # The hub first: its IDE sessions end, and the browser IDE gets a moment to show
        # that before it goes away with the job.
        if hub is not None:
            hub.stop()
        if ide is not None:
            ide.stop(linger=IDE_LINGER)
    result["exitcode"] = code
    result["ended"] = time.time()
    if culler is not None:  # the culler ended this node: IDLE_EXIT_CODE, not retried
        code = culler.finish(result, code)
    if run_dir:
        write_json(run_dir.node_file(node.node_rank), result)
    return code


if __name__ == "__main__":
    sys.exit(main())
