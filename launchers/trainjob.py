"""Kubeflow Trainer v2 TrainJob: dry-run and validation only (see fi_dist.k8s.trainjob)."""

from __future__ import annotations

from fi_dist.errors import LauncherError
from fi_dist.k8s import trainjob as manifest
from fi_dist.k8s.validation import validate
from fi_dist.launcher import DryRun, Launcher
from fi_dist.spec import JobSpec


class TrainJobLauncher(Launcher):
    name = "trainjob"

    def dryrun(self, spec: JobSpec) -> DryRun:
        docs = manifest.documents(spec)
        for doc in docs:
            if doc["kind"] == manifest.KIND:
                validate(doc, require_schema=False)
        return DryRun(self.name, spec, docs, docs)

    def schedule(self, dryrun: DryRun) -> str:
        raise LauncherError("the trainjob launcher is dry-run only for now (it has not been "
                            "tried on a Trainer v2 cluster); use --launcher pytorchjob, or "
                            "`--dry-run | kubectl apply -f -`")


def create_launcher() -> TrainJobLauncher:
    return TrainJobLauncher()
