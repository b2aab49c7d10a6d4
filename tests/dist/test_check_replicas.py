"""fi_dist.check_replicas across real gloo ranks: a parameter perturbed on one rank is named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent('''
    import json, sys
    import torch, torch.distributed as dist
    import fi_dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2),
                                torch.nn.BatchNorm1d(2))
    before = fi_dist.check_replicas(model)
    if rank == 1:
        with torch.no_grad():
            model[2].weight[1, 3] += 0.5
    after = fi_dist.check_replicas(model)
    try:
        fi_dist.check_replicas(model, raise_on_mismatch=True)
        raised = ""
    except Exception as exc:
        raised = type(exc).__name__
    out = {"before": [before.ok, str(before)], "after": [after.ok, str(after)],
           "first": after.divergences[0].name, "groups": after.divergences[0].groups,
           "diff": after.divergences[0].max_abs_diff, "raised": raised}
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)
    dist.destroy_process_group()
''')


def test_check_replicas_names_the_perturbed_parameter_and_rank(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for r in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r),
               "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{r}.json")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    results = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    assert all(r == results[0] for r in results)  # every rank gets the same answer
    res = results[0]
    assert res["before"] == [True, "all 9 parameters and buffers agree on every rank"]
    assert res["first"] == "2.weight" and res["groups"] == [[0], [1]]
    assert res["diff"] == pytest.approx(0.5)
    assert res["after"] == [False, "parameter '2.weight' diverged: rank 1 differs from rank 0 "
                                   "(max abs diff 0.5); 1 of 9 parameters and buffers differ"]
    assert res["raised"] == "ReplicasDiverged"
