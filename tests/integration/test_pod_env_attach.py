"""``fi-dist attach JOB --launcher pytorchjob`` end to end, through a real port-forward.

The generated PyTorchJob runs as in test_pod_env (operator-derived env, real node
agents on loopback, the hub beside rank 0 in the "Master pod"). A loopback stand-in
for the apiserver serves the job object, its token Secret, and the pod
``portforward`` websocket (the ``v4.channel.k8s.io`` protocol the kubernetes client
speaks), connecting each stream to the pod's port. The launcher's ``attach`` uses
the official client's port-forward; the hub's DAP client then attaches through the
forwarded port with the configuration ``attach`` printed, and stops a
``breakpoint()`` in the Worker pod's rank.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from test_pod_env import free_port, start_pods, stop_pods

from fi_dist.k8s.cluster import Cluster
from fi_dist.launchers.pytorchjob import PyTorchJobLauncher
from fi_dist.launchjson import ATTACH_CONFIG_NAME
from fi_dist.registry import get_launcher
from fi_dist.spec import DebugSpec, JobSpec
from tests.support.dap_client import JobClient

pytestmark = pytest.mark.timeout(300)
TOKEN = "bearer-for-test"
SCRIPT = '''\
import torch, torch.distributed as dist
dist.init_process_group("gloo")
x = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(x)
if dist.get_rank() == 1:
    pod_marker = 7
    breakpoint()  # BP-LINE
dist.barrier()
print(f"sum {x.item()}", flush=True)
dist.destroy_process_group()
'''


class LoopbackApi:
    """aiohttp on 127.0.0.1: GET job, GET secret, pod portforward websocket."""

    def __init__(self, objects: dict[str, dict]) -> None:
        from aiohttp import web

        self.objects = objects
        self.forwards = 0
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{ns}/pods/{pod}/portforward", self.portforward)
        app.router.add_get("/{path:.*}", self.get)
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=serve, daemon=True).start()
        assert ready.wait(30)

    def _authorized(self, request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def get(self, request):
        from aiohttp import web

        if not self._authorized(request):
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        obj = self.objects.get("/" + request.match_info["path"])
        if obj is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"},
                                     status=404)
        return web.json_response(obj)

    async def portforward(self, request):
        from aiohttp import WSMsgType, web

        if not self._authorized(request):
            return web.Response(status=401)
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        self.forwards += 1
        port = int(request.query["ports"])
        tag = port.to_bytes(2, "little")
        await ws.send_bytes(b"\x00" + tag)  # data channel of port 0
        await ws.send_bytes(b"\x01" + tag)  # its error channel
        # kubelet's port-forward reaches the port on the pod's own localhost
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:  # what kubelet does: a message on the error channel
            await ws.send_bytes(b"\x01" + f"connect to port {port}: {exc}".encode())
            await ws.close()
            return ws

        async def to_pod() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and msg.data[:1] == b"\x00":
                    writer.write(msg.data[1:])
                    await writer.drain()
            writer.close()

        async def from_pod() -> None:
            while data := await reader.read(65536):
                await ws.send_bytes(b"\x00" + data)
            await ws.close()

        await asyncio.gather(to_pod(), from_pod(), return_exceptions=True)
        return ws

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)


def wait_listening(port: int, pods: list, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            assert all(p.poll() is None for _, p in pods), "a pod ended before its hub was up"
            time.sleep(0.3)
    raise AssertionError(f"nothing listens on the hub port {port} after {timeout}s")


def test_attach_through_the_kubernetes_port_forward(tmp_path: Path) -> None:
    from kubernetes import client

    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    name = f"attach-{uuid.uuid4().hex[:8]}"  # FI_DIST_RUN_ID: the sweep finds only ours
    spec = JobSpec(script=str(script), name=name, nnodes=2, nproc_per_node=1,
                   image="img:1", master_port=free_port(),
                   debug=DebugSpec(enabled=True, port=free_port(), wait_for_client=True))
    secret, job = get_launcher("pytorchjob").dryrun(spec).documents
    token = secret["stringData"]["token"]
    api = LoopbackApi({
        f"/apis/kubeflow.org/v1/namespaces/default/pytorchjobs/{name}": job,
        f"/api/v1/namespaces/default/secrets/{name}-fi-dist-debug": {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret["metadata"]["name"]},
            "data": {"token": base64.b64encode(token.encode()).decode()}},
    })
    conf = client.Configuration(host=f"http://127.0.0.1:{api.port}",
                                api_key={"authorization": TOKEN},
                                api_key_prefix={"authorization": "Bearer"})
    launcher = PyTorchJobLauncher(cluster=Cluster(client.ApiClient(conf)))
    pods = start_pods([secret, job], tmp_path)
    fwd = jc = None
    try:
        wait_listening(spec.debug.port, pods)  # the Master pod's readiness: its hub is up
        # The hub's own port is taken on this shared loopback (in a cluster it is inside
        # the pod), so the forward listens on another one here.
        attachment = launcher.attach(f"default:{name}", local_port=0)
        fwd, config = attachment.forward, attachment.config
        assert fwd is not None
        assert f"Secret default/{name}-fi-dist-debug" in attachment.token_lifetime
        assert config["name"] == ATTACH_CONFIG_NAME and config["fiDistToken"] == token
        assert config["connect"] == {"host": "127.0.0.1", "port": fwd.local_port}
        assert fwd.local_port != spec.debug.port  # really through the forward
        jc = JobClient(config)
        jc.attach(timeout=120)
        children = jc.wait_children(2, timeout=120)
        assert {r: jc.child_names[r] for r in children} == {0: "rank 0 (node 0)",
                                                            1: "rank 1 (node 1)"}
        stop = children[1].wait_event("stopped", timeout=120)
        frame = jc.top_frame(1, stop["body"]["threadId"])
        assert jc.evaluate(1, "pod_marker", frame["id"]) == "7"
        children[1].request("continue", {"threadId": stop["body"]["threadId"]})
        jc.close()
        jc = None
        outputs = []
        for pod, p in pods:
            out, _ = p.communicate(timeout=120)
            outputs.append(out)
            assert p.returncode == 0, f"{pod.name}:\n{out[-3000:]}"
        assert "sum 3.0" in outputs[0]
        # The root session went through the forward. The hub names its own address for
        # the per-rank sessions, which here (one loopback) the client reaches directly.
        assert api.forwards >= 1
    finally:
        if jc is not None:
            jc.close()
        if fwd is not None:
            fwd.close()
        stop_pods(spec.name, pods)
        api.close()
