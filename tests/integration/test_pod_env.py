"""The generated PyTorchJob, run as the operator would run it, on loopback.

Nothing here writes a pod's env by hand: :func:`fi_dist.k8s.operator.pod_envs`
derives every pod's environment from the dry-run's documents the way the training
operator and the kubelet do (MASTER_ADDR = ``<job>-master-0``, RANK = node index,
WORLD_SIZE, PET_*, ``status.podIP``, secret keys). The only translation is the
cluster's network: pod DNS names and pod IPs become loopback addresses (node i ->
127.0.0.(i+2)) and the pod's one interface becomes ``lo``. Each pod's container
command then runs as a real process with exactly that env (plus PATH/HOME from the
image), and every rank reports its view of the job.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fi_dist import env_vars as ev
from fi_dist import procs as procs_mod
from fi_dist.k8s import operator
from fi_dist.registry import get_launcher
from fi_dist.spec import DebugSpec, JobSpec

pytestmark = pytest.mark.timeout(300)

PROBE = '''
import json, os, torch, torch.distributed as dist
from fi_dist.runtime.environment import RankEnvironment
dist.init_process_group("gloo")
env = RankEnvironment.from_env()
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print("PROBE " + json.dumps({
    "rank": env.rank, "local_rank": env.local_rank, "node_rank": env.node_rank,
    "world_size": env.world_size, "local_world_size": env.local_world_size,
    "node_addr": env.node_addr, "master_addr": env.master_addr, "master_port": env.master_port,
    "launcher": env.launcher.value, "dist_rank": dist.get_rank(),
    "dist_world": dist.get_world_size(), "allreduce": t.item(),
    "ckpt": os.environ.get("FI_DIST_CKPT_DIR"), "grace": os.environ.get("FI_DIST_GRACE_PERIOD"),
    "debug": os.environ.get("FI_DIST_DEBUG"), "token": os.environ.get("FI_DIST_DEBUG_TOKEN"),
}), flush=True)
dist.barrier()
dist.destroy_process_group()
'''


def pod_ip(pod: operator.Pod) -> str:
    return f"127.0.0.{pod.node_rank + 2}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_pods(documents: list[dict], cwd: Path) -> list[tuple[operator.Pod, subprocess.Popen]]:
    """Start every pod's container command with its derived env."""
    pods = operator.pod_envs(documents, pod_ip)
    dns = {pod.name: pod_ip(pod) for pod, _ in pods}  # the headless Services' records
    procs = []
    for pod, env in pods:
        env = {k: dns.get(v, v) for k, v in env.items()}
        env.update({"PATH": os.environ["PATH"], "HOME": str(cwd),
                    ev.GLOO_SOCKET_IFNAME: "lo"})  # the image's env; the pod's interface
        argv = [sys.executable if a == "python" else a for a in pod.container["command"]]
        procs.append((pod, subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True,
                                            start_new_session=True)))
    return procs


def run_pods(documents: list[dict], cwd: Path) -> dict[int, dict]:
    """Run every pod to its end; each rank's PROBE view."""
    procs = start_pods(documents, cwd)
    run_id = documents[-1]["metadata"]["name"]
    views: dict[int, dict] = {}
    output = []
    try:
        for pod, p in procs:
            out, _ = p.communicate(timeout=240)
            output.append(f"--- {pod.name} exit {p.returncode}\n{out}")
            assert p.returncode == 0, "\n".join(output)[-4000:]
            for line in out.splitlines():
                # raw_decode, every occurrence: another rank's write may share the line
                # (several writers on one pipe; print's text and newline are two writes).
                for chunk in line.split("PROBE ")[1:]:
                    view, _ = json.JSONDecoder().raw_decode(chunk)
                    views[view["rank"]] = view
    finally:
        stop_pods(run_id, procs)
    return views


def stop_pods(run_id: str, procs: list[tuple[operator.Pod, subprocess.Popen]]) -> None:
    """End every process of the emulated pods (as deleting the pods would).

    torchelastic starts ranks in sessions of their own, so the node agents' process
    groups do not hold them; every process carries FI_DIST_RUN_ID (the job name).
    """
    for _, p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    procs_mod.terminate(run_id, grace=2.0)


# With the debug hub: the plain case is the same minus the FI_DIST_DEBUG* variables
# (asserted absent in test_pytorchjob_dryrun); one run keeps the suite inside its budget.
@pytest.mark.parametrize("debug", [True], ids=["debug"])
def test_every_rank_sees_the_job_the_manifest_describes(tmp_path: Path, debug: bool) -> None:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    port = free_port()
    spec = JobSpec(script=str(script), name=f"pod-env-{uuid.uuid4().hex[:8]}", nnodes=2,
                   nproc_per_node=2,
                   image="img:1", master_port=port, grace_period=45,
                   checkpoint_uri="pvc://ckpts/run1",
                   debug=DebugSpec(enabled=debug, port=free_port() if debug else 5678))
    documents = get_launcher("pytorchjob").dryrun(spec).documents
    views = run_pods(documents, tmp_path)

    assert sorted(views) == [0, 1, 2, 3]
    for rank, v in views.items():
        node = rank // 2
        assert v == {
            "rank": rank, "local_rank": rank % 2, "node_rank": node, "world_size": 4,
            "local_world_size": 2, "node_addr": f"127.0.0.{node + 2}",
            "master_addr": "127.0.0.2", "master_port": port, "launcher": "pytorchjob",
            "dist_rank": rank, "dist_world": 4, "allreduce": 10.0,
            "ckpt": "/fi-dist/ckpt/run1", "grace": "45",
            "debug": "1" if debug else None,
            "token": documents[0]["stringData"]["token"] if debug else None,
        }, v


def test_derivation_follows_the_manifest_not_the_spec() -> None:
    """Edit the manifest: the derived env follows it (port, replicas, nprocPerNode)."""
    spec = JobSpec(script="t.py", name="j", nnodes=2, nproc_per_node=2, image="i")
    (job,) = get_launcher("pytorchjob").dryrun(spec).documents
    job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = 2
    job["spec"]["nprocPerNode"] = "3"
    for c in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]:
        c["ports"][0]["containerPort"] = 31000
    pods = operator.pod_envs([job], pod_ip)
    assert [(p.name, e["RANK"], e["PET_NODE_RANK"]) for p, e in pods] == [
        ("j-master-0", "0", "0"), ("j-worker-0", "1", "1"), ("j-worker-1", "2", "2")]
    for _, env in pods:
        assert env["WORLD_SIZE"] == "9" and env["PET_NNODES"] == "3"
        assert env["MASTER_PORT"] == env["PET_MASTER_PORT"] == "31000"
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "j-master-0"
        assert env["PET_NPROC_PER_NODE"] == "3"
    assert [e["FI_DIST_NODE_ADDR"] for _, e in pods] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
