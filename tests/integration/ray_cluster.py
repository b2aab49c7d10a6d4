"""A 2-node Ray cluster on loopback in its own process, driven over stdin.

Run as ``python ray_cluster.py``: prints ``ADDRESS <gcs address>`` once both nodes
are up, then obeys lines on stdin: ``preempt`` removes the non-head node and adds a
fresh one (a preempted Kubernetes node replaced by the autoscaler), ``quit`` (or EOF)
shuts the cluster down. Its own process, so the env Ray reads at import time
(loopback only, no auth token) never leaks into the test process.
"""

from __future__ import annotations

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"

from ray.cluster_utils import Cluster

NODE = {"num_cpus": 2, "object_store_memory": 80 * 1024 * 1024}


def start() -> tuple[Cluster, object]:
    # Ray 2.60 gives each raylet a fixed 30 s to register; a loaded machine can miss it.
    for attempt in range(3):
        cluster = Cluster()
        try:
            cluster.add_node(**NODE, include_dashboard=False)
            worker = cluster.add_node(**NODE)
            cluster.wait_for_nodes()
            return cluster, worker
        except Exception as exc:
            print(f"cluster start failed ({exc}); retrying", file=sys.stderr, flush=True)
            cluster.shutdown()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def main() -> None:
    cluster, worker = start()
    print(f"ADDRESS {cluster.address}", flush=True)
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "preempt":
                cluster.remove_node(worker, allow_graceful=False)
                worker = cluster.add_node(**NODE)
                cluster.wait_for_nodes()
                print("PREEMPTED", flush=True)
            elif cmd == "quit":
                break
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
