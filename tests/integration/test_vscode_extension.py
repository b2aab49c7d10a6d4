"""The fi-dist VSCode extension as a user installs it: the .vsix shipped in the package,
``fi-dist vscode install`` into a desktop editor's command line, and the real code-server
installing it with no network at all (a network namespace of its own; the tests run as
root, as CI does)."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from fi_dist import editor
from fi_dist.runtime import codeserver
from tests.integration.test_codeserver import code_server_binary


def test_the_vsix_carries_the_extension_source() -> None:
    vsix = editor.vsix_path()
    with zipfile.ZipFile(vsix) as z:
        names = set(z.namelist())
        assert {"extension/package.json", "extension/extension.js"} <= names
        packed = json.loads(z.read("extension/package.json"))
        assert z.read("extension/extension.js") == \
            (editor.extension_dir() / "extension.js").read_bytes(), \
            "the .vsix is older than its source: run scripts/build_extension.sh"
    assert packed == json.loads((editor.extension_dir() / "package.json").read_text())
    assert not any("node_modules" in n for n in names)  # nothing fetched, nothing bundled


def test_fi_dist_vscode_install_hands_the_vsix_to_the_editor(run_cli, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    fake = bin_dir / "code"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "Extension installed."\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    out = run_cli("vscode", "install", env=env)
    assert out.returncode == 0, out.output
    assert calls.read_text().split() == ["--install-extension", str(editor.vsix_path()),
                                         "--force"]
    assert "fi-dist: attach all ranks" in out.stdout
    assert run_cli("vscode", "path").stdout.strip() == str(editor.vsix_path())
    fake.write_text("#!/bin/sh\necho 'no space left' >&2\nexit 3\n")
    out = run_cli("vscode", "install", "--editor", str(fake))
    assert out.returncode == 2 and "failed (3): no space left" in out.stderr
    out = run_cli("vscode", "install", "--editor", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no VSCode command line found" in out.stderr


@pytest.mark.timeout(240)
def test_code_server_installs_the_extension_offline(tmp_path: Path) -> None:
    binary = code_server_binary()
    other = tmp_path / "other"
    (other / "extension").mkdir(parents=True)
    (other / "extension" / "package.json").write_text(json.dumps({
        "name": "other", "publisher": "someone", "version": "1.2.3",
        "engines": {"vscode": "^1.80.0"}}))
    other_vsix = tmp_path / "other.vsix"
    with zipfile.ZipFile(other_vsix, "w") as z:
        z.write(other / "extension" / "package.json", "extension/package.json")
    folder = tmp_path / "ws"
    folder.mkdir()
    cfg = codeserver.workspace_config(folder, 0, [str(other_vsix)])
    assert cfg.extensions == [editor.vsix_path(), other_vsix]
    assert (cfg.state_dir / "password").stat().st_mode & 0o777 == 0o600
    # Offline for real: code-server runs in a network namespace of its own with no
    # interface up (not even loopback), as in an air-gapped pod.
    offline = tmp_path / "code-server-offline"
    offline.write_text(f'#!/bin/sh\nexec unshare --net {binary} "$@"\n')
    offline.chmod(0o755)
    server = codeserver.CodeServer(cfg, offline)
    server.install_extensions()
    installed = json.loads((cfg.state_dir / "extensions" / "extensions.json").read_text())
    ids = {e["identifier"]["id"] for e in installed}
    assert {editor.EXTENSION_ID, "someone.other"} <= ids
    assert (cfg.state_dir / "extensions" / f"{editor.EXTENSION_ID}-{editor.version()}"
            / "extension.js").is_file()
    bad = codeserver.CodeServer(codeserver.CodeServerConfig(
        folder=folder, state_dir=tmp_path / "s2", password="x",
        extensions=[tmp_path / "missing.vsix"]), binary)
    with pytest.raises(RuntimeError, match="could not install"):
        bad.install_extensions()
