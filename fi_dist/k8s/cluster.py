"""Talk to a Kubernetes cluster through the official client: create, read, logs, delete.

Imported only when a job is sent to or read from a cluster. Custom objects go
through ``CustomObjectsApi`` as plain dicts (what was validated is what is sent).
Before creating, the object is validated against the CRD *the cluster serves*
(``apiextensions.k8s.io``), falling back to the local CRD directory when reading the
CRD is forbidden.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from fi_dist.errors import LauncherError

log = logging.getLogger("fi_dist.k8s")


@dataclass(frozen=True)
class Resource:
    """Where a custom resource lives in the API."""

    group: str
    version: str
    plural: str

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


BUILT_IN = ("Secret", "NetworkPolicy")
"""Built-in kinds the launchers create beside their custom objects."""

RESOURCES = {
    "PyTorchJob": Resource("kubeflow.org", "v1", "pytorchjobs"),
    "RayJob": Resource("ray.io", "v1", "rayjobs"),
    "TrainJob": Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
}


def api_client(context: str | None = None) -> Any:
    """An ApiClient from the kubeconfig (or in-cluster config).

    Raises:
        LauncherError: no kubeconfig and not inside a pod (names what was tried).
    """
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    # Read KUBECONFIG now: the client reads it once, when it is first imported.
    config_file = os.environ.get("KUBECONFIG") or None
    try:
        return config.new_client_from_config(config_file=config_file, context=context)
    except (ConfigException, FileNotFoundError) as first:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except ConfigException:
            raise LauncherError(
                f"no Kubernetes cluster configured: {str(first).rstrip('.')}. Point KUBECONFIG at a "
                "kubeconfig (or ~/.kube/config), or run inside a pod; `--dry-run` needs "
                "neither") from None


def split_job_id(job_id: str, default_namespace: str = "default") -> tuple[str, str]:
    """``NAMESPACE:NAME`` or ``NAME`` -> (namespace, name)."""
    ns, sep, name = job_id.partition(":")
    return (ns, name) if sep else (default_namespace, job_id)


class Cluster:
    """The handful of API calls the Kubernetes launchers make."""

    def __init__(self, api: Any | None = None) -> None:
        from kubernetes import client

        self.api = api or api_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.ext = client.ApiextensionsV1Api(self.api)
        self.networking = client.NetworkingV1Api(self.api)

    def served_crd(self, kind: str) -> dict[str, Any] | None:
        """The CRD as the cluster serves it, camelCase; None if it may not be read."""
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.ext.read_custom_resource_definition(RESOURCES[kind].crd_name,
                                                            _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                raise LauncherError(f"the cluster has no {RESOURCES[kind].crd_name} CRD: is "
                                    f"the operator for {kind} installed?") from None
            log.warning("cannot read CRD %s (%s); validating against local CRDs",
                        RESOURCES[kind].crd_name, exc.reason)
            return None
        return json.loads(resp.data)

    def create(self, documents: list[dict[str, Any]]) -> None:
        """Validate each custom object against the served CRD, then create everything."""
        from fi_dist.k8s.validation import validate

        for doc in documents:
            if doc["kind"] in RESOURCES:
                validate(doc, crd=self.served_crd(doc["kind"]), require_schema=False)
        for doc in documents:
            ns = doc["metadata"]["namespace"]
            if doc["kind"] in BUILT_IN:
                self.create_built_in(doc)
            else:
                r = RESOURCES[doc["kind"]]
                self.custom.create_namespaced_custom_object(r.group, r.version, ns, r.plural, doc)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        r = RESOURCES[kind]
        return self.custom.get_namespaced_custom_object(r.group, r.version, namespace,
                                                        r.plural, name)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        from kubernetes import client

        r = RESOURCES[kind]
        self.custom.delete_namespaced_custom_object(
            r.group, r.version, namespace, r.plural, name,
            body=client.V1DeleteOptions(propagation_policy="Foreground"))

    def create_built_in(self, doc: dict[str, Any]) -> None:
        """Create a Secret or NetworkPolicy (plain dict body, sent as it is)."""
        ns = doc["metadata"]["namespace"]
        if doc["kind"] == "Secret":
            self.core.create_namespaced_secret(ns, doc)
        elif doc["kind"] == "NetworkPolicy":
            self.networking.create_namespaced_network_policy(ns, doc)
        else:
            raise LauncherError(f"cannot create a {doc['kind']}")

    def set_owner(self, doc: dict[str, Any], owner: dict[str, Any]) -> None:
        """Add ``owner`` to the ownerReferences of the created Secret/NetworkPolicy ``doc``."""
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        patch = {"metadata": {"ownerReferences": [owner]}}
        if doc["kind"] == "Secret":
            self.core.patch_namespaced_secret(name, ns, patch)
        elif doc["kind"] == "NetworkPolicy":
            self.networking.patch_namespaced_network_policy(name, ns, patch)
        else:
            raise LauncherError(f"cannot set the owner of a {doc['kind']}")

    def delete_built_in(self, doc: dict[str, Any]) -> None:
        """Delete a Secret/NetworkPolicy fi-dist created (gone already is fine)."""
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        if doc["kind"] == "Secret":
            self.delete_secret(ns, name)
        elif doc["kind"] == "NetworkPolicy":
            self.delete_network_policy(ns, name)

    def delete_secret(self, namespace: str, name: str) -> None:
        _absent_ok(self.core.delete_namespaced_secret, name, namespace)

    def delete_network_policy(self, namespace: str, name: str) -> None:
        _absent_ok(self.networking.delete_namespaced_network_policy, name, namespace)

    def pods(self, namespace: str, selector: str) -> list[Any]:
        return self.core.list_namespaced_pod(namespace, label_selector=selector).items

    def pod_log(self, namespace: str, pod: str, container: str) -> str:
        return self.core.read_namespaced_pod_log(pod, namespace, container=container)

    def exec(self, namespace: str, pod: str, container: str, command: list[str],
             timeout: float = 60.0) -> str:
        """``command``'s standard output, run in the pod's container (``kubectl exec``).

        Read from the websocket's stdout channel: with ``_preload_content`` the client
        deserializes an output that looks like JSON into a dict and returns its repr.
        """
        from kubernetes.stream import stream

        ws = stream(self.core.connect_get_namespaced_pod_exec, pod, namespace, command=command,
                    container=container, stdin=False, stdout=True, stderr=False, tty=False,
                    _preload_content=False)
        try:
            ws.run_forever(timeout=timeout)
            return str(ws.read_stdout(timeout=0) or "")
        finally:
            ws.close()


def _absent_ok(delete: Any, name: str, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    try:
        delete(name, namespace)
    except ApiException as exc:
        if exc.status != 404:
            raise
