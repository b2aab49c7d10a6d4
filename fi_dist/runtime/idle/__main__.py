"""``python -m fi_dist.runtime.idle --node K``: node K's culler as a process of its own.

For hosts with no node agent to run it in a thread: a Ray node, where the driver's
first rank actor on the node starts it by this command line (the driver never imports
the runtime). Settings, run directory and grace period come from the job's contract in
the environment. Prints :data:`~fi_dist.contract.IDLE_READY` once it watches; after it
ended the node (SIGTERM to the node's ranks: a checkpoint request, SIGKILL after the
grace period) it exits :data:`~fi_dist.contract.IDLE_EXIT_CODE`; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from fi_dist import contract
from fi_dist.contract import IDLE_EXIT_CODE, IDLE_READY
from fi_dist.rundir import RunDir
from fi_dist.runtime.idle.notify import notifiers_from_spec
from fi_dist.runtime.idle.sampler import make_sampler
from fi_dist.runtime.idle.watcher import IdleWatcher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fi_dist.runtime.idle")
    p.add_argument("--node", type=int, required=True, help="the node whose ranks to watch")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"[node{args.node} idle] %(message)s")
    job = contract.current()
    if job.idle is None or not job.run_dir:
        print("fi-dist idle: the job's contract has no idle settings or run directory "
              "(FI_DIST_IDLE_TIMEOUT, FI_DIST_RUN_DIR)", file=sys.stderr)
        return 2
    done = threading.Event()
    watcher = IdleWatcher(job.idle, RunDir(Path(job.run_dir)), args.node,
                          make_sampler(job.idle.sampler), notifiers_from_spec(job.idle),
                          grace=job.grace_period, after_end=done.set)
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    watcher.start()
    print(f"{IDLE_READY} {args.node}", flush=True)
    done.wait()
    ended = watcher.ended
    watcher.stop()
    return IDLE_EXIT_CODE if ended else 0


if __name__ == "__main__":
    sys.exit(main())
