"""A real ``fi-dist run --debug`` keeps the user's own .vscode/launch.json (JSONC) intact."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import json5
import pytest

from fi_dist.launchjson import ATTACH_CONFIG_NAME, DEBUGPY_CONFIG_NAME
from tests.support.cli import fi_dist_cmd

pytestmark = pytest.mark.timeout(240)

USER_FILE = """\
{
    // my launch configurations (VSCode's JSONC: comments and trailing commas)
    "version": "0.2.0",
    "configurations": [
        {
            "name": "train locally", /* the one I use */
            "type": "debugpy",
            "request": "launch",
            "program": "${workspaceFolder}/train.py",
        },
    ],
}
"""


def test_debug_run_keeps_the_users_launch_json(tmp_path: Path) -> None:
    (tmp_path / "tiny.py").write_text("print('tiny job done', flush=True)\n")
    path = tmp_path / ".vscode" / "launch.json"
    path.parent.mkdir()
    path.write_text(USER_FILE)
    path.chmod(0o644)
    out = subprocess.run(fi_dist_cmd("run", "--plain", "--debug", "--debug-port", "0",
                                     "--master-port", "0", "--nnodes", "1",
                                     "--nproc-per-node", "1", "tiny.py"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "tiny job done" in out.stdout

    text = path.read_text()
    head, tail = USER_FILE.split("        },\n", 1)
    assert text.startswith(head + "        },\n        {\n")  # the user's part, byte for byte
    assert text.endswith("        },\n" + tail)  # ours, then the user's trailing comma
    configs = json5.loads(text)["configurations"]
    assert [c["name"] for c in configs] == ["train locally", ATTACH_CONFIG_NAME,
                                            DEBUGPY_CONFIG_NAME]
    assert [c["type"] for c in configs] == ["debugpy", "fi-dist", "debugpy"]
    run_id = (tmp_path / ".fi-dist" / "current").read_text().strip()
    debug = tmp_path / ".fi-dist" / "runs" / run_id / "debug.json"
    assert configs[1] == json.loads(debug.read_text())["config"]  # what attach --print shows
    for secret in (path, debug):  # both hold the job token
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
