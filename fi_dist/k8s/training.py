"""The PyTorchJob lifecycle through kubeflow-training's ``TrainingClient`` (the v1 operator's SDK).

create, status, per-replica logs and delete go through ``TrainingClient`` and its typed
``KubeflowOrgV1PyTorchJob``; the token Secret, the served CRD and the port-forward stay
on :class:`~fi_dist.k8s.cluster.Cluster`, over the same ApiClient configuration.

What is validated is what is sent. ``create_job`` takes the typed model, and the
kubernetes ApiClient serializes a model by its known attributes only, so a field the
model does not know would silently not be sent (kubernetes 35's ``V1PodSpec`` has no
``schedulingGroup``, which the v1.9.4 CRD allows). So the manifest is turned into the
model, the model back into the dict that goes on the wire (the same
``sanitize_for_serialization`` call ``create_namespaced_custom_object`` makes), that
dict must equal the manifest, and it is what is validated against the served CRD.

Imported only when a job goes to or comes from a cluster (never by a dry-run).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from fi_dist.errors import LauncherError
from fi_dist.k8s import pytorchjob as manifest
from fi_dist.k8s.cluster import BUILT_IN, Cluster

log = logging.getLogger("fi_dist.k8s")

KIND = "PyTorchJob"
MODEL = "KubeflowOrgV1PyTorchJob"
BUILT_IN_MODELS = {"NetworkPolicy": "V1NetworkPolicy"}
"""Built-in objects checked like the job: the kubernetes model must send them as built."""


@contextlib.contextmanager
def _api_error() -> Iterator[None]:
    """TrainingClient wraps API errors in RuntimeError/TimeoutError; hand the cause on.

    The ApiException (or urllib3 error) is re-raised as it is, so the CLI words it like
    every other cluster error (``not found: ...``, ``the cluster refused: 401 ...``).
    """
    try:
        yield
    except (RuntimeError, TimeoutError) as exc:
        cause = exc.__cause__ or exc.__context__
        if cause is not None and type(cause).__module__.startswith(("kubernetes", "urllib3")):
            raise cause from None
        raise LauncherError(str(exc)) from None


def differences(sent: Any, wire: Any, path: str = "") -> list[str]:
    """Paths where ``wire`` lost, gained or changed something of ``sent``."""
    if isinstance(sent, dict) and isinstance(wire, dict):
        out = [f"{path}.{k}".lstrip(".") + (" (dropped)" if k in sent else " (added)")
               for k in sorted(set(sent) ^ set(wire))]
        for k in sorted(set(sent) & set(wire)):
            out += differences(sent[k], wire[k], f"{path}.{k}")
        return out
    if isinstance(sent, list) and isinstance(wire, list) and len(sent) == len(wire):
        return [d for i, (a, b) in enumerate(zip(sent, wire, strict=True))
                for d in differences(a, b, f"{path}[{i}]")]
    if sent != wire or type(sent) is not type(wire):
        return [f"{path.lstrip('.')} ({sent!r} -> {wire!r})"]
    return []


class PyTorchJobs:
    """PyTorchJobs of one cluster, through ``TrainingClient``."""

    def __init__(self, cluster: Cluster) -> None:
        from kubeflow.training import TrainingClient

        self.cluster = cluster
        # TrainingClient takes a Configuration (not an ApiClient): ours carries the
        # kubeconfig and context fi-dist resolved, or the in-cluster config, and with it
        # TrainingClient skips its own load_kube_config (a process-wide default).
        self.client = TrainingClient(client_configuration=cluster.api.configuration,
                                     namespace="default", job_kind=KIND)

    def to_model(self, doc: dict[str, Any]) -> Any:
        """The typed model of a manifest (how ``get_job`` reads one from the API)."""
        from kubeflow.training.utils.utils import FakeResponse

        return self.client.api_client.deserialize(FakeResponse(doc), MODEL)

    def to_wire(self, model: Any) -> dict[str, Any]:
        """What the kubernetes client sends for ``model`` (``create_job``'s request body)."""
        return self.cluster.api.sanitize_for_serialization(model)

    def create(self, documents: list[dict[str, Any]]) -> None:
        """Check and validate what will be sent, create it in order, then make the job the
        owner of the Secret and the NetworkPolicy.

        The Secret and the policy are created *before* the job: a pod whose env names a
        missing Secret key does not start, and no pod should run before its policy. Their
        ownerReference needs the job's uid, so it is patched on once the job exists (the
        garbage collector then deletes them with the job). If creating fails, what was
        already created is deleted again; a failed patch is a warning (the job runs, and
        ``fi-dist cancel`` deletes both by name).

        Raises:
            LauncherError: a typed model would change an object (names the fields).
            ManifestError: the job sent is not valid for the CRD the cluster serves.
        """
        from fi_dist.k8s.validation import validate

        models = {}
        for doc in documents:
            if doc["kind"] in BUILT_IN_MODELS:
                self._check_model(doc, BUILT_IN_MODELS[doc["kind"]],
                                  self.cluster.api.deserialize)
            elif doc["kind"] == KIND:
                models[id(doc)] = model = self._check_model(doc, MODEL, self.client.api_client
                                                            .deserialize)
                validate(self.to_wire(model), crd=self.cluster.served_crd(KIND),
                         require_schema=False)
            elif doc["kind"] not in BUILT_IN:
                raise LauncherError(f"a PyTorchJob submit cannot create a {doc['kind']}")
        created: list[dict[str, Any]] = []
        try:
            for doc in documents:
                if doc["kind"] == KIND:
                    with _api_error():
                        self.client.create_job(job=models[id(doc)],
                                               namespace=doc["metadata"]["namespace"])
                else:
                    self.cluster.create_built_in(doc)
                    created.append(doc)
        except BaseException:
            for doc in created:  # nothing of a job that was never created stays behind
                with contextlib.suppress(Exception):
                    self.cluster.delete_built_in(doc)
            raise
        jobs = [d for d in documents if d["kind"] == KIND]
        if created and jobs:
            self._give_owner(created, jobs[0]["metadata"])

    def _give_owner(self, owned: list[dict[str, Any]], job_meta: dict[str, Any]) -> None:
        """Make the created job the owner of ``owned``; failures are warnings (see create)."""
        try:
            owner = manifest.owner_reference(self.get(job_meta["namespace"], job_meta["name"]))
        except Exception as exc:  # the job runs; its Secret/policy stay until cancel
            log.warning("fi-dist: cannot read the uid of %s to own its %s (%s); "
                        "`fi-dist cancel` deletes them", job_meta["name"],
                        " and ".join(d["kind"] for d in owned), getattr(exc, "reason", exc))
            return
        for doc in owned:
            try:
                self.cluster.set_owner(doc, owner)
            except Exception as exc:
                log.warning("fi-dist: %s %s was created but could not be given its job as "
                            "owner (%s); `fi-dist cancel` deletes it", doc["kind"],
                            doc["metadata"]["name"], getattr(exc, "reason", exc))

    def _check_model(self, doc: dict[str, Any], model_name: str, deserialize: Any) -> Any:
        """``doc`` as the typed model the client sends, which must send ``doc`` unchanged."""
        from kubeflow.training.utils.utils import FakeResponse

        model = deserialize(FakeResponse(doc), model_name)
        if lost := differences(doc, self.to_wire(model)):
            raise LauncherError(f"the client's {model_name} would not send "
                                f"{doc['metadata']['name']} as built: {', '.join(lost)}")
        return model

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """The job as the API returns it, in its wire (camelCase) form."""
        with _api_error():
            return self.to_wire(self.client.get_job(name, namespace=namespace))

    def conditions(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """``status.conditions`` (type, status, message, ...), oldest first."""
        with _api_error():
            found = self.client.get_job_conditions(name, namespace=namespace)
        return [self.to_wire(c) for c in found]

    def logs(self, namespace: str, name: str, replica_type: str | None = None,
             replica_index: int | None = None) -> dict[str, str]:
        """Pod name -> the ``pytorch`` container's log, for every started pod of the job
        (or of one replica: ``replica_type`` ``master``/``worker`` and its index)."""
        with _api_error():
            logs, _ = self.client.get_job_logs(name, namespace=namespace, is_master=False,
                                               replica_type=replica_type,
                                               replica_index=replica_index)
        return logs

    def delete(self, namespace: str, name: str) -> None:
        """Delete the job, its pods before it (foreground)."""
        from kubernetes import client

        with _api_error():
            self.client.delete_job(name, namespace=namespace, delete_options=client.V1DeleteOptions(
                propagation_policy="Foreground"))
