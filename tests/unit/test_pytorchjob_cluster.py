"""Cluster operations through the official kubernetes client, against a loopback API.

No Kubernetes API server runs here, so a minimal one does: a thread serving the REST
paths the launcher uses (create/get/delete custom objects and secrets, list pods,
pod logs, read the CRD, merge-patch an object's metadata), which serves the *real*
PyTorchJob CRD from ../shared/crds, gives created objects a uid as the apiserver does
and checks the bearer token from the kubeconfig. The CLI runs
in-process (``fi_dist.cli.main``) with KUBECONFIG pointing at it.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from fi_dist.cli import main
from fi_dist.config import load_spec
from fi_dist.k8s.validation import load_crd
from fi_dist.registry import get_launcher

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-bearer-token"


class Api:
    """State of the loopback API: objects by path, a request log, pod logs."""

    def __init__(self, crd: dict) -> None:
        self.crd = crd
        self.objects: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.pod_logs: dict[str, str] = {}
        self.patches: list[tuple[str, str, dict]] = []
        self.sent: dict[str, dict] = {}  # each created object as the client sent it


def merge(target: dict, patch: dict) -> None:
    """A JSON merge patch (lists replaced), enough for the metadata patches sent here."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


def operator_pod(name: str) -> dict:
    """A running pod ``<job>-<master|worker>-<i>`` labelled as the training operator does
    (TrainingClient selects a job's and a replica's pods by these labels)."""
    job, rtype, index = name.rsplit("-", 2)
    labels = {"training.kubeflow.org/job-name": job,
              "training.kubeflow.org/replica-type": rtype,
              "training.kubeflow.org/replica-index": index}
    if rtype == "master":
        labels["training.kubeflow.org/job-role"] = "master"
    return {"metadata": {"name": name, "namespace": "default", "labels": labels},
            "status": {"phase": "Running"}}


def make_handler(api: Api) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: object, ctype: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str) -> None:
            self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                              "reason": reason, "code": code, "message": reason})

        def _handle(self, method: str) -> None:
            url = urlparse(self.path)
            api.requests.append((method, url.path))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._status(401, "Unauthorized")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path = url.path
            if path == "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" \
                       "pytorchjobs.kubeflow.org":
                return self._send(200, api.crd)
            if path.endswith("/log"):
                pod = path.split("/")[-2]
                return self._send(200, api.pod_logs.get(pod, ""), "text/plain")
            if path.endswith("/pods") and method == "GET":
                selector = parse_qs(url.query).get("labelSelector", [""])[0]
                wanted = dict(term.split("=", 1) for term in selector.split(","))
                items = [pod for pod in map(operator_pod, sorted(api.pod_logs))
                         if wanted.items() <= pod["metadata"]["labels"].items()]
                return self._send(200, {"kind": "PodList", "apiVersion": "v1",
                                        "metadata": {}, "items": items})
            if method == "POST":
                name = body["metadata"]["name"]
                if f"{path}/{name}" in api.objects:
                    return self._status(409, "AlreadyExists")
                api.sent[f"{path}/{name}"] = copy.deepcopy(body)
                body["metadata"]["uid"] = str(uuid.uuid4())
                api.objects[f"{path}/{name}"] = body
                return self._send(201, body)
            if method == "PATCH":
                if path not in api.objects:
                    return self._status(404, "NotFound")
                api.patches.append((path, self.headers.get("Content-Type", ""), body))
                merge(api.objects[path], body)
                return self._send(200, api.objects[path])
            if method == "GET":
                if path not in api.objects:
                    return self._status(404, "NotFound")
                return self._send(200, api.objects[path])
            if method == "DELETE":
                if api.objects.pop(path, None) is None:
                    return self._status(404, "NotFound")
                return self._send(200, {"kind": "Status", "apiVersion": "v1",
                                        "status": "Success"})
            return self._status(405, "MethodNotAllowed")

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

    return Handler


@pytest.fixture
def api(crds_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    state = Api(copy.deepcopy(load_crd("PyTorchJob", crds_dir)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "loop", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "me", "user": {"token": TOKEN}}],
        "contexts": [{"name": "test", "context": {"cluster": "loop", "user": "me"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.chdir(REPO)
    yield state
    server.shutdown()
    server.server_close()


JOBS = "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs"
SECRETS = "/api/v1/namespaces/default/secrets"


def test_submit_status_logs_cancel(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    config = REPO / "configs" / "pytorchjob_cpu_2x2.toml"
    assert main(["run", "--config", str(config)]) == 0
    assert "submitted default:ddp-cpu" in capsys.readouterr().out
    expected = get_launcher("pytorchjob").dryrun(load_spec(config)).documents[0]
    assert api.sent[f"{JOBS}/ddp-cpu"] == expected  # what was validated is what was sent

    assert main(["status", "ddp-cpu", "--launcher", "pytorchjob"]) == 0
    assert capsys.readouterr().out.strip() == "default:ddp-cpu: pending (no conditions yet)"
    api.objects[f"{JOBS}/ddp-cpu"]["status"] = {"conditions": [
        {"type": "Created", "status": "True"},
        {"type": "Running", "status": "True", "message": "all pods running"}]}
    assert main(["status", "default:ddp-cpu", "--launcher", "pytorchjob", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "running"

    api.pod_logs = {"ddp-cpu-master-0": "[node0 rank0] step 0\n[node0 rank1] step 0\n",
                    "ddp-cpu-worker-0": "[node1 rank2] step 0\n[node1 rank3] boom\n"}
    assert main(["logs", "ddp-cpu", "--launcher", "pytorchjob", "--rank", "3"]) == 0
    assert capsys.readouterr().out == "[node1 rank3] boom\n"
    assert main(["logs", "ddp-cpu", "--launcher", "pytorchjob"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ddp-cpu-master-0: [node0 rank0] step 0" and len(out) == 4

    assert main(["cancel", "ddp-cpu", "--launcher", "pytorchjob"]) == 0
    assert f"{JOBS}/ddp-cpu" not in api.objects
    assert ("DELETE", f"{JOBS}/ddp-cpu") in api.requests
    assert main(["status", "ddp-cpu", "--launcher", "pytorchjob"]) == 2
    assert "not found" in capsys.readouterr().err


def test_debug_job_creates_its_secret_first_then_owns_it(api: Api) -> None:
    """The Secret exists before the job (its pods read the token from it when they start)
    and is then patched to be owned by the created job (its uid), so the garbage collector
    deletes it with the job."""
    assert main(["run", "--launcher", "pytorchjob", "--image", "img:1", "--name", "dbg",
                 "--debug", "examples/ddp_train.py"]) == 0
    writes = [(m, p) for m, p in api.requests if m in ("POST", "PATCH")]
    assert writes == [("POST", SECRETS), ("POST", JOBS), ("PATCH", f"{SECRETS}/dbg-fi-dist-debug")]
    job_uid = api.objects[f"{JOBS}/dbg"]["metadata"]["uid"]
    secret = api.objects[f"{SECRETS}/dbg-fi-dist-debug"]
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "dbg", "uid": job_uid}]
    assert "ownerReferences" not in api.sent[f"{SECRETS}/dbg-fi-dist-debug"]["metadata"]
    api.objects[f"{SECRETS}/dbg-fi-dist-debug"] = {
        **secret, "data": {"token": base64.b64encode(
            secret["stringData"]["token"].encode()).decode()}}
    launcher = get_launcher("pytorchjob")
    assert launcher.hub_token("default", "dbg") == secret["stringData"]["token"]
    main(["cancel", "dbg", "--launcher", "pytorchjob"])
    assert not api.objects  # the job and its token secret


def test_submit_validates_against_the_crd_the_cluster_serves(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    # A cluster whose (older) operator does not know nprocPerNode: refused before creating.
    served = copy.deepcopy(api.crd)
    del served["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["nprocPerNode"]
    api.crd = served
    assert main(["run", "--config", str(REPO / "configs" / "pytorchjob_cpu_2x2.toml")]) == 2
    assert "spec.nprocPerNode: unknown field" in capsys.readouterr().err
    assert not api.objects


def test_wrong_credentials_are_reported(api: Api, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = Path(tmp_path / "kubeconfig")
    kubeconfig.write_text(kubeconfig.read_text().replace(TOKEN, "wrong"))
    assert main(["status", "x", "--launcher", "pytorchjob"]) == 2
    err = capsys.readouterr().err
    assert "the cluster refused: 401" in err and "Traceback" not in err


def test_lifecycle_goes_through_training_client(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """create/status/logs/delete are kubeflow-training's TrainingClient calls, with the
    typed model on create and the operator's replica labels for one rank's logs."""
    from kubeflow.training import KubeflowOrgV1PyTorchJob, TrainingClient

    calls: list[tuple[str, object]] = []
    for method in ("create_job", "get_job", "get_job_conditions", "get_job_logs",
                   "delete_job"):
        real = getattr(TrainingClient, method)

        def spy(self: object, *args: object, _real=real, _name=method, **kwargs: object):
            calls.append((_name, kwargs.get("job") or kwargs.get("replica_type")))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(TrainingClient, method, spy)
    config = REPO / "configs" / "pytorchjob_cpu_2x2.toml"
    assert main(["run", "--config", str(config)]) == 0
    assert main(["status", "ddp-cpu", "--launcher", "pytorchjob"]) == 0
    api.pod_logs = {"ddp-cpu-master-0": "[node0 rank1] a\n", "ddp-cpu-worker-0": "[node1 rank2] b\n"}
    assert main(["logs", "ddp-cpu", "--launcher", "pytorchjob", "--rank", "2"]) == 0
    assert main(["cancel", "ddp-cpu", "--launcher", "pytorchjob"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == ["[node1 rank2] b", "cancelled ddp-cpu"]
    names = [name for name, _ in calls]
    assert names == ["create_job", "get_job_conditions", "get_job", "get_job", "get_job_logs",
                     "delete_job"]
    assert isinstance(calls[0][1], KubeflowOrgV1PyTorchJob)
    assert calls[4][1] == "worker"  # one replica's pods, selected by the operator's labels


def test_rank_of_a_pod_not_started_is_named(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(REPO / "configs" / "pytorchjob_cpu_2x2.toml")]) == 0
    api.pod_logs = {"ddp-cpu-master-0": "[node0 rank0] a\n"}
    assert main(["logs", "ddp-cpu", "--launcher", "pytorchjob", "--rank", "3"]) == 2
    assert "rank 3 runs in pod ddp-cpu-worker-0, which does not exist" in capsys.readouterr().err


def test_a_field_the_typed_model_would_drop_is_refused(api: Api) -> None:
    """create_job serializes the typed model, which only knows its attributes: a field the
    CRD allows but the model lacks is reported, not silently left out of the request."""
    from fi_dist.errors import LauncherError
    from fi_dist.k8s.cluster import Cluster

    launcher = get_launcher("pytorchjob")
    dry = launcher.dryrun(load_spec(REPO / "configs" / "pytorchjob_cpu_2x2.toml"))
    job = dry.request[0]
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["schedulingGroup"] = {
        "podGroupName": "g"}  # in the v1.9.4 CRD, not in kubernetes 35's V1PodSpec
    launcher._cluster = Cluster()
    with pytest.raises(LauncherError, match=r"spec\.pytorchReplicaSpecs\.Worker\.template\."
                                            r"spec\.schedulingGroup \(dropped\)"):
        launcher.schedule(dry)
    assert not api.objects


def test_differences_name_each_path() -> None:
    from fi_dist.k8s.training import differences

    sent = {"a": {"b": 1, "c": [1, {"d": 2}]}, "e": 4}
    assert differences(sent, sent) == []
    assert differences(sent, {"a": {"b": "1", "c": [1, {}]}, "f": 0}) == [
        "e (dropped)", "f (added)", "a.b (1 -> '1')", "a.c[1].d (dropped)"]


NETPOLS = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies"


def test_network_policy_is_created_first_owned_by_the_job_and_cancelled(api: Api) -> None:
    assert main(["run", "--launcher", "pytorchjob", "--image", "img:1", "--name", "np",
                 "--nnodes", "2", "--debug", "--network-policy", "examples/ddp_train.py"]) == 0
    posts = [p for m, p in api.requests if m == "POST"]
    assert posts == [NETPOLS, SECRETS, JOBS]  # no pod of the job runs before its policy
    policy = api.objects[f"{NETPOLS}/np-fi-dist"]
    assert policy["spec"]["podSelector"] == {"matchLabels": {"fi-dist.io/job": "np"}}
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "fi-dist.io/job": "np"}}}]}]
    uid = api.objects[f"{JOBS}/np"]["metadata"]["uid"]
    for path in (f"{NETPOLS}/np-fi-dist", f"{SECRETS}/np-fi-dist-debug"):
        assert api.objects[path]["metadata"]["ownerReferences"][0]["uid"] == uid
    assert {path for path, _, _ in api.patches} == {f"{NETPOLS}/np-fi-dist",
                                                    f"{SECRETS}/np-fi-dist-debug"}
    assert main(["cancel", "np", "--launcher", "pytorchjob"]) == 0
    assert not api.objects  # job, Secret and policy


def test_a_job_that_cannot_be_created_leaves_no_secret_or_policy(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    api.objects[f"{JOBS}/dup"] = {"metadata": {"name": "dup", "uid": "1"}}  # 409 on create
    assert main(["run", "--launcher", "pytorchjob", "--image", "img:1", "--name", "dup",
                 "--debug", "--network-policy", "examples/ddp_train.py"]) == 2
    assert "the cluster refused: 409" in capsys.readouterr().err
    assert set(api.objects) == {f"{JOBS}/dup"}
    assert ("DELETE", f"{SECRETS}/dup-fi-dist-debug") in api.requests


def test_owner_patch_refused_is_a_warning_not_a_failed_submit(
        api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from kubernetes import client

    def refuse(*args: object, **kwargs: object) -> None:
        raise client.exceptions.ApiException(status=403, reason="Forbidden")

    monkeypatch.setattr(client.CoreV1Api, "patch_namespaced_secret", refuse)
    assert main(["run", "--launcher", "pytorchjob", "--image", "img:1", "--name", "own",
                 "--debug", "examples/ddp_train.py"]) == 0
    assert "could not be given its job as owner (Forbidden)" in caplog.text
    assert f"{SECRETS}/own-fi-dist-debug" in api.objects  # cancel deletes it by name
    assert main(["cancel", "own", "--launcher", "pytorchjob"]) == 0
    assert not api.objects
