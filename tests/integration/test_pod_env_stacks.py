"""``fi-dist stacks JOB --launcher pytorchjob`` end to end, through a real ``exec``.

The generated PyTorchJob runs as in test_pod_env (operator-derived env, real node
agents, the hang job: rank 3 in ``load_batch`` while the others wait in
``all_reduce``). A loopback stand-in for the apiserver serves the job object and the
pod ``exec`` websocket (``v4.channel.k8s.io``, as the kubernetes client speaks it),
running the requested command with that pod's env, as the kubelet runs it in the
container. The launcher execs the in-pod collector in every pod and merges them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from test_pod_env import free_port, pod_ip, start_pods, stop_pods
from test_pod_env_attach import TOKEN, LoopbackApi

from fi_dist import env_vars as ev
from fi_dist.hang.ledger import hang_dir, read_ledgers
from fi_dist.k8s import operator
from fi_dist.k8s.cluster import Cluster
from fi_dist.launchers.pytorchjob import PyTorchJobLauncher
from fi_dist.registry import get_launcher
from fi_dist.spec import JobSpec
from tests.support.debug_job import marker_line
from tests.support.hang_job import write_hang_job

pytestmark = pytest.mark.timeout(300)


class ExecApi(LoopbackApi):
    """The stand-in, plus ``exec``: the command runs with the named pod's env."""

    def __init__(self, objects: dict[str, dict], pod_envs: dict[str, dict[str, str]],
                 cwd: Path) -> None:
        self.pod_envs = pod_envs
        self.cwd = cwd
        self.execs: list[tuple[str, list[str]]] = []
        super().__init__(objects)

    async def get(self, request):
        if request.path.endswith("/exec"):
            return await self.exec(request)
        return await super().get(request)

    async def exec(self, request):
        from aiohttp import web

        if not self._authorized(request):
            return web.Response(status=401)
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        pod = request.match_info.get("path", "").split("/pods/")[1].split("/")[0]
        command = request.query.getall("command")
        self.execs.append((pod, command))
        argv = [sys.executable if a == "python" else a for a in command]
        proc = await asyncio.create_subprocess_exec(*argv, env=self.pod_envs[pod], cwd=self.cwd,
                                                    stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        await ws.send_bytes(b"\x01" + out)
        status = {"metadata": {}, "status": "Success" if proc.returncode == 0 else "Failure"}
        await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        await ws.close()
        return ws


def test_stacks_of_a_pytorchjob_through_exec(tmp_path: Path) -> None:
    from kubernetes import client

    script = write_hang_job(tmp_path)
    name = f"stacks-{uuid.uuid4().hex[:8]}"  # FI_DIST_RUN_ID: the sweep finds only ours
    release = tmp_path / "release"
    spec = JobSpec(script=str(script), name=name, nnodes=2, nproc_per_node=2, image="img:1",
                   master_port=free_port(),
                   env={"HANG_MODE": "behind", "HANG_RELEASE": str(release)})
    (job,) = get_launcher("pytorchjob").dryrun(spec).documents
    envs = {}
    dns = {pod.name: pod_ip(pod) for pod, _ in operator.pod_envs([job], pod_ip)}
    for pod, env in operator.pod_envs([job], pod_ip):
        envs[pod.name] = {**{k: dns.get(v, v) for k, v in env.items()},
                          "PATH": os.environ["PATH"], "HOME": str(tmp_path),
                          ev.GLOO_SOCKET_IFNAME: "lo"}
    api = ExecApi({f"/apis/kubeflow.org/v1/namespaces/default/pytorchjobs/{name}": job},
                  envs, tmp_path)
    conf = client.Configuration(host=f"http://127.0.0.1:{api.port}",
                                api_key={"authorization": TOKEN},
                                api_key_prefix={"authorization": "Bearer"})
    launcher = PyTorchJobLauncher(cluster=Cluster(client.ApiClient(conf)))
    pods = start_pods([job], tmp_path)
    directory = hang_dir(None, name)  # in a pod: its own /tmp; here the pods share one
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ledgers = read_ledgers(directory)
            if sum(any(s.in_flight and s.kind == "python" for s in v.slots)
                   for v in ledgers.values()) == 3:
                break
            assert all(p.poll() is None for _, p in pods), "a pod ended early"
            time.sleep(0.3)
        report = launcher.stacks(f"default:{name}")
        assert sorted(pod for pod, _ in api.execs) == [f"{name}-master-0", f"{name}-worker-0"]
        assert all(cmd == ["python", "-m", "fi_dist.hang.collect", "--json"]
                   for _, cmd in api.execs)
        reduce_line = marker_line(script, "ALL-REDUCE-LINE")
        load_line = marker_line(script, "LOAD-BATCH-LINE")
        assert report.run_id == f"default:{name}"
        assert [d.node for d in report.dumps] == [0, 0, 1, 1]
        assert report.diagnosis.text == (
            f"rank 3 is behind: ranks 0-2 wait in all_reduce #6 (hang_job.py:{reduce_line} in "
            f"step); rank 3 completed #5 and is at hang_job.py:{load_line} in load_batch")
        release.touch()
        for pod, p in pods:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, f"{pod.name}:\n{out[-3000:]}"
    finally:
        stop_pods(name, pods)
        api.close()
        shutil.rmtree(directory.parent, ignore_errors=True)
