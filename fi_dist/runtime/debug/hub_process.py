"""Start and stop the hub process beside rank 0 (called by node 0's node agent).

The hub is its own process so that rank 0 being paused (or busy in a collective)
never stops it from serving the IDE and the other ranks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

from fi_dist import env_vars as ev
from fi_dist.runtime.environment import NodeEnvironment

READY = "fi-dist-hub-ready"


class HubStartError(RuntimeError):
    """The hub could not start (port taken, bad address); its output says why."""


def _pump(stream: object) -> None:
    for text in stream:  # type: ignore[attr-defined]
        sys.stderr.write(text)
        sys.stderr.flush()


def start(node: NodeEnvironment, timeout: float = 30.0) -> subprocess.Popen[str] | None:
    """Start the hub when this is node 0 of a ``--debug`` job; None otherwise."""
    if os.environ.get(ev.FI_DIST_DEBUG) != "1" or node.node_rank != 0:
        return None
    proc = subprocess.Popen(
        [sys.executable, "-m", "fi_dist.runtime.debug.hub", "--rank-host", node.node_addr],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    ready = threading.Event()

    def wait_ready() -> None:
        for text in proc.stdout:  # type: ignore[union-attr]
            if text.startswith(READY):
                ready.set()
                break
            seen.append(text)
            sys.stderr.write(text)

    reader = threading.Thread(target=wait_ready, daemon=True)
    reader.start()
    reader.join(timeout)
    if not ready.is_set():
        proc.kill()
        raise HubStartError("the fi-dist debug hub did not start: " + "".join(seen[-20:]))
    threading.Thread(target=_pump, args=(proc.stdout,), daemon=True).start()
    return proc


def stop(proc: subprocess.Popen[str] | None) -> None:
    """End the hub (the job is over)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
