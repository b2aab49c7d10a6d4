"""Kubeflow PyTorchJob launcher: dry-run, submit, status, logs, cancel, attach, stacks.

``dryrun`` builds and validates the objects (with ``--network-policy`` a NetworkPolicy,
a Secret with the hub token when debugging, then the PyTorchJob) without touching a
network; ``schedule`` creates them in that order and then makes the job the owner of
the Secret and the policy, so they are deleted with it. The job's lifecycle
(create, status, per-replica logs, delete) goes through kubeflow-training's
``TrainingClient`` (:mod:`fi_dist.k8s.training`), the Secret and attach's port-forward
through the kubernetes client (:mod:`fi_dist.k8s.cluster`); both are imported only then.
Job ids are ``NAMESPACE:NAME``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

from fi_dist.contract import stacks_command
from fi_dist.errors import LauncherError
from fi_dist.hang.report import Report, dumps_from_json
from fi_dist.hang.stacks import RankDump
from fi_dist.k8s import networkpolicy
from fi_dist.k8s import pytorchjob as manifest
from fi_dist.k8s.rules import PYTORCH_CONTAINER
from fi_dist.k8s.validation import ManifestError, validate
from fi_dist.launcher import Attachment, DryRun, JobState, JobStatus
from fi_dist.launchjson import attach_config
from fi_dist.spec import JobSpec

from .kube import KubernetesLauncher

log = logging.getLogger("fi_dist.launchers.pytorchjob")

# The operator's last condition -> our state.
_CONDITIONS = {"Created": JobState.PENDING, "Running": JobState.RUNNING,
               "Restarting": JobState.RUNNING, "Succeeded": JobState.SUCCEEDED,
               "Failed": JobState.FAILED, "Suspended": JobState.PENDING}


def job_state(obj: dict[str, Any]) -> tuple[JobState, str]:
    """(state, message) from a PyTorchJob's ``status.conditions``."""
    return conditions_state((obj.get("status") or {}).get("conditions") or [])


def conditions_state(conditions: list[dict[str, Any]]) -> tuple[JobState, str]:
    """(state, message) from the operator's conditions: the last true one wins."""
    conditions = [c for c in conditions if c.get("status") == "True"]
    if not conditions:
        return JobState.PENDING, "no conditions yet"
    last = conditions[-1]
    return _CONDITIONS.get(str(last.get("type")), JobState.UNKNOWN), last.get("message", "")


class PyTorchJobLauncher(KubernetesLauncher):
    name = "pytorchjob"

    def __init__(self, cluster: Any | None = None) -> None:
        super().__init__(cluster)
        self._jobs: Any | None = None

    def dryrun(self, spec: JobSpec) -> DryRun:
        docs = manifest.documents(spec)
        for doc in docs:
            if doc["kind"] == manifest.KIND:
                validate(doc, require_schema=False)
            elif doc["kind"] == networkpolicy.KIND and (errors := networkpolicy.check(doc)):
                raise ManifestError(f"NetworkPolicy {doc['metadata']['name']!r} is invalid:\n  "
                                    + "\n  ".join(errors))
        return DryRun(self.name, spec, docs, docs)

    @property
    def jobs(self) -> Any:
        """The cluster's PyTorchJobs through TrainingClient, on the launcher's cluster."""
        if self._jobs is None:
            from fi_dist.k8s.training import PyTorchJobs

            self._jobs = PyTorchJobs(self.cluster)
        return self._jobs

    def schedule(self, dryrun: DryRun) -> str:
        self.jobs.create(dryrun.request)
        return f"{dryrun.spec.namespace}:{dryrun.spec.name}"

    def _job(self, job_id: str) -> tuple[str, str, dict[str, Any]]:
        from fi_dist.k8s.cluster import split_job_id

        ns, name = split_job_id(job_id)
        return ns, name, self.jobs.get(ns, name)

    def status(self, job_id: str) -> JobStatus:
        from fi_dist.k8s.cluster import split_job_id

        ns, name = split_job_id(job_id)
        state, message = conditions_state(self.jobs.conditions(ns, name))
        return JobStatus(f"{ns}:{name}", state, message)

    def logs(self, job_id: str, rank: int | None = None) -> Iterable[str]:
        """Log lines of the job's pods; with ``rank``, only that rank's ``[nodeK rankR]`` lines."""
        if rank is None:
            from fi_dist.k8s.cluster import split_job_id

            ns, name = split_job_id(job_id)
            logs = self.jobs.logs(ns, name)
            for pod in sorted(logs, key=_node_order):
                for line in logs[pod].splitlines():
                    yield f"{pod}: {line}"
            return
        ns, name, obj = self._job(job_id)
        node = rank // int(obj["spec"].get("nprocPerNode", "1"))
        rtype, index = ("master", 0) if node == 0 else ("worker", node - 1)
        want = f"{name}-{rtype}-{index}"
        logs = self.jobs.logs(ns, name, replica_type=rtype, replica_index=index)
        if want not in logs:
            raise LauncherError(f"rank {rank} runs in pod {want}, which does not exist or "
                                "has not started")
        for line in logs[want].splitlines():
            if f" rank{rank}]" in line:
                yield line

    def cancel(self, job_id: str) -> None:
        from fi_dist.k8s.cluster import split_job_id

        ns, name = split_job_id(job_id)
        self.jobs.delete(ns, name)
        # Owned by the job (the garbage collector deletes them too); deleted here as well
        # for a job whose owner references could not be set. Absent ones are fine.
        self.cluster.delete_secret(ns, f"{name}-fi-dist-debug")
        self.cluster.delete_network_policy(ns, networkpolicy.name(name))

    def hub_token(self, namespace: str, name: str) -> str:
        secret = self.cluster.core.read_namespaced_secret(f"{name}-fi-dist-debug", namespace)
        return base64.b64decode(secret.data[manifest.TOKEN_KEY]).decode()

    def attach(self, job_id: str, local_port: int | None = None) -> Attachment:
        """Port-forward to the Master pod's hub; the attachment holds the forward.

        The local port defaults to the hub's own port: the hub tells the IDE to open
        each rank's session at ``127.0.0.1:<hub port>``, which then is the forward too.
        """
        from fi_dist.k8s.portforward import PortForward

        ns, name, obj = self._job(job_id)
        master = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        ports = {p["name"]: p["containerPort"] for c in master["containers"]
                 for p in c.get("ports", [])}
        if manifest.HUB_PORT_NAME not in ports:
            raise LauncherError(f"{job_id} was not started with debugging on (no "
                                f"{manifest.HUB_PORT_NAME} port on its Master)")
        remote = ports[manifest.HUB_PORT_NAME]
        try:
            fwd = PortForward(self.cluster.core, ns, f"{name}-master-0", remote,
                              remote if local_port is None else local_port).start()
        except OSError as exc:
            raise LauncherError(f"cannot listen on 127.0.0.1:{local_port or remote} for the "
                                f"forward ({exc.strerror}); pick another with --local-port "
                                "(the IDE's per-rank sessions then need the hub port free)"
                                ) from None
        return Attachment(attach_config("127.0.0.1", fwd.local_port, self.hub_token(ns, name)),
                          forward=fwd, token_lifetime=(
                              f"as long as the Secret {ns}/{name}-fi-dist-debug, which goes "
                              f"with the PyTorchJob {ns}/{name} (its owner) or `fi-dist cancel`"))


    def stacks(self, job_id: str, all_threads: bool = False) -> Report:
        """Every pod's ranks, through ``kubectl exec`` of the in-pod collector; merged here.

        Each pod runs ``python -m fi_dist.hang.collect --json`` (its node's ranks: the
        ledgers and dump threads in the pod's own temporary directory), all pods at once.
        """
        ns, name, obj = self._job(job_id)
        replicas = obj["spec"]["pytorchReplicaSpecs"]
        workers = int((replicas.get("Worker") or {}).get("replicas") or 0)
        pods = [f"{name}-master-0", *(f"{name}-worker-{i}" for i in range(workers))]
        answers: dict[str, Any] = {}

        def ask(pod: str) -> None:
            try:
                answers[pod] = json.loads(self.cluster.exec(
                    ns, pod, PYTORCH_CONTAINER, stacks_command("python", all_threads)))
            except Exception as exc:  # an API error, a pod not running, no fi-dist in it
                answers[pod] = exc

        threads = [threading.Thread(target=ask, args=(p,), daemon=True) for p in pods]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        dumps: dict[int, RankDump] = {}
        failed = []
        for pod in pods:
            answer = answers.get(pod)
            if not isinstance(answer, dict):
                failed.append(f"{pod}: {answer or 'no answer'}")
                continue
            for d in dumps_from_json(answer):  # a pod lists the ranks it cannot see too
                if d.rank not in dumps or dumps[d.rank].state == "not started":
                    dumps[d.rank] = d
        if not dumps:
            raise LauncherError(f"no stacks from {job_id}: " + "; ".join(failed))
        report = Report(f"{ns}:{name}", sorted(dumps.values(), key=lambda d: d.rank),
                        all_threads)
        for note in failed:
            log.warning("fi-dist stacks: %s", note)
        return report


def _node_order(pod: str) -> tuple[int, int]:
    """``<job>-master-0`` first, then the workers by index (worker-10 after worker-9)."""
    head, _, index = pod.rpartition("-")
    return (0 if head.endswith("-master") else 1, int(index) if index.isdigit() else 0)


def create_launcher() -> PyTorchJobLauncher:
    return PyTorchJobLauncher()
