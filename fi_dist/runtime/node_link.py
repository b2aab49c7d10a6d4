"""The node agent's link to the launcher that started it: heartbeats out, a lifeline in.

Locally no kubelet watches the nodes, so the node agent does two things a pod gets
from its node:

* **heartbeats** (:data:`~fi_dist.contract.HEARTBEAT_EVERY`): a small UDP datagram to
  the contract's ``heartbeat`` address, sent over the node's own network (in netns mode
  out of its ``eth0`` and through the run's switch), so a partitioned or frozen node
  falls silent the way a NotReady node does and the launcher can treat it as lost;
* **the lifeline**: the launcher holds the write end of a pipe whose read end every
  node agent inherits. When the launcher is gone, however it went (exit, Ctrl-C,
  ``kill -9``, the OOM killer), the read end sees end of file and the node stops its
  own processes the usual way: SIGTERM, SIGKILL after the grace period, then it exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time

from fi_dist import procs
from fi_dist.contract import HEARTBEAT_EVERY, JobContract, heartbeat_message

log = logging.getLogger("fi_dist.node_agent")


def start(job: JobContract, node: int) -> None:
    """Start this node's heartbeat and lifeline threads (each only when the contract has it)."""
    if job.heartbeat:
        host, _, port = job.heartbeat.rpartition(":")
        threading.Thread(target=_beat, args=((host, int(port)), job, node),
                         name="fi-dist-heartbeat", daemon=True).start()
    if job.lifeline_fd is not None and job.run_id:
        threading.Thread(target=_watch, args=(job.lifeline_fd, job, node),
                         name="fi-dist-lifeline", daemon=True).start()


def _beat(address: tuple[str, int], job: JobContract, node: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        seq = 0
        while True:
            # No route while partitioned: the silence is the message.
            with contextlib.suppress(OSError):
                sock.sendto(heartbeat_message(job.run_id, node, job.attempt, seq), address)
            seq += 1
            time.sleep(HEARTBEAT_EVERY)


def _watch(fd: int, job: JobContract, node: int) -> None:
    try:
        while os.read(fd, 64):
            pass
    except OSError as exc:  # not inherited (started by hand): nothing to watch
        log.warning("[node%d] fi-dist: no lifeline to the launcher (fd %d: %s)", node, fd,
                    exc.strerror)
        return
    log.warning("[node%d] fi-dist: the launcher is gone; stopping this node's processes "
                "(SIGKILL after %gs)", node, job.grace_period)
    procs.terminate(job.run_id, node, grace=job.grace_period)
    os._exit(128 + signal.SIGTERM)
