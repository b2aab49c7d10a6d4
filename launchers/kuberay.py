"""KubeRay RayJob launcher: dry-run, submit, status, cancel (see fi_dist.k8s.rayjob).

The RayJob's entrypoint runs fi-dist's Ray launcher inside the cluster
(:mod:`fi_dist.launchers.ray`); this module only talks to the Kubernetes API.
"""

from __future__ import annotations

from collections.abc import Iterable

from fi_dist.errors import LauncherError
from fi_dist.k8s import rayjob as manifest
from fi_dist.k8s.validation import validate
from fi_dist.launcher import DryRun, JobState, JobStatus
from fi_dist.spec import JobSpec

from .kube import KubernetesLauncher

# KubeRay's status.jobDeploymentStatus -> our state.
_DEPLOYMENT = {"New": JobState.PENDING, "Initializing": JobState.PENDING,
               "Running": JobState.RUNNING, "Complete": JobState.SUCCEEDED,
               "Failed": JobState.FAILED, "Suspended": JobState.CANCELLED,
               "Retrying": JobState.RUNNING}


class RayJobLauncher(KubernetesLauncher):
    name = "rayjob"

    def dryrun(self, spec: JobSpec) -> DryRun:
        doc = manifest.build(spec)
        validate(doc, require_schema=False)
        return DryRun(self.name, spec, [doc], [doc])

    def schedule(self, dryrun: DryRun) -> str:
        self.cluster.create(dryrun.request)
        return f"{dryrun.spec.namespace}:{dryrun.spec.name}"

    def status(self, job_id: str) -> JobStatus:
        from fi_dist.k8s.cluster import split_job_id

        ns, name = split_job_id(job_id)
        st = self.cluster.get(manifest.KIND, ns, name).get("status") or {}
        state = _DEPLOYMENT.get(st.get("jobDeploymentStatus", ""), JobState.UNKNOWN)
        if st.get("jobStatus") == "FAILED":
            state = JobState.FAILED
        return JobStatus(f"{ns}:{name}", state, st.get("message", ""))

    def logs(self, job_id: str, rank: int | None = None) -> Iterable[str]:
        raise LauncherError("rayjob logs: read them with `ray job logs` against the job's "
                            "dashboard, or `kubectl logs` on the submitter pod")

    def cancel(self, job_id: str) -> None:
        from fi_dist.k8s.cluster import split_job_id

        ns, name = split_job_id(job_id)
        self.cluster.delete(manifest.KIND, ns, name)


def create_launcher() -> RayJobLauncher:
    return RayJobLauncher()
