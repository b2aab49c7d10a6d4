"""Base of the launchers that talk to a Kubernetes cluster (PyTorchJob, RayJob)."""

from __future__ import annotations

from typing import Any

from fi_dist.launcher import Launcher


class KubernetesLauncher(Launcher):
    """Holds the cluster client, created on first use so dry-runs never need one."""

    def __init__(self, cluster: Any | None = None) -> None:
        self._cluster = cluster

    @property
    def cluster(self) -> Any:
        if self._cluster is None:
            from fi_dist.k8s.cluster import Cluster

            self._cluster = Cluster()
        return self._cluster
