"""code-server (VSCode in the browser) on rank 0 of node 0, for ``@interactive_pytorch``.

Started bound to 127.0.0.1 with password auth in the task's source directory, its
config and data kept out of the home directory. Reach it through a port-forward
(``kubectl port-forward pod/<rank-0 pod> 8080``). A code-server that is not installed is
not an error: :func:`find` returns None, the caller says so once and the debug hub still
serves a local VSCode through a port-forward of the hub port.

Installation is ``scripts/install_code_server.sh`` (npm, pinned version, no GitHub
downloads) into ``.tools/code-server``; ``FI_DIST_CODE_SERVER`` names another binary.

Before it starts, the fi-dist VSCode extension shipped in the package
(:mod:`fi_dist.editor`) and any ``.vsix`` the user named are installed with code-server's
own ``--install-extension``, from the files: no marketplace, no network. The extension
brings the ``fi-dist`` debug type (its adapter is the debug hub) and the Ranks view, so
"fi-dist: attach all ranks" works in the browser without Microsoft's Python extension.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fi_dist import editor, rundir
from fi_dist import env_vars as ev
from fi_dist.contract import DebugSettings
from fi_dist.launchjson import ATTACH_CONFIG_NAME, PRIVATE_MODE

log = logging.getLogger("fi_dist.codeserver")

VERSION = "4.100.3"
"""The pinned release (the last one that runs on Node 20)."""

_PR_SET_PDEATHSIG = 1


def project_prefix() -> Path:
    """Where ``scripts/install_code_server.sh`` installs by default (``.tools/code-server``)."""
    return Path(__file__).resolve().parents[2] / ".tools" / "code-server"


def find() -> Path | None:
    """The code-server binary: ``FI_DIST_CODE_SERVER``, the project install, then PATH."""
    named = os.environ.get(ev.FI_DIST_CODE_SERVER)
    if named:
        path = Path(named)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    local = project_prefix() / "node_modules" / ".bin" / "code-server"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("code-server")
    return Path(found) if found else None


def missing_message() -> str:
    """What to tell the user when :func:`find` returns None."""
    return ("code-server is not installed (run scripts/install_code_server.sh, or set "
            f"{ev.FI_DIST_CODE_SERVER} to its binary); the debug hub still works: port-forward "
            "its port and attach a local VSCode with 'fi-dist: attach all ranks'")


@dataclass
class CodeServerConfig:
    """How rank 0 starts code-server."""

    folder: Path
    """The workspace it opens: the task's source directory."""
    state_dir: Path
    """Its user data, extensions and XDG config/data (kept out of $HOME)."""
    password: str
    """The login password (code-server's ``--auth password``)."""
    port: int = 8080
    """Port on 127.0.0.1; 0 picks a free one."""
    host: str = "127.0.0.1"
    """Bind address; loopback unless asked (reach it through a port-forward)."""
    extra_args: list[str] = field(default_factory=list)
    """More code-server flags."""
    extensions: list[Path] = field(default_factory=list)
    """``.vsix`` files installed (offline, ``--install-extension``) before it starts."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"CodeServerConfig.port must be in 0..65535, got {self.port}")
        if not self.password:
            raise ValueError("CodeServerConfig.password must not be empty")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # code-server lives exactly as long as the rank that started it.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class CodeServer:
    """A running code-server; :meth:`stop` ends its whole process group."""

    def __init__(self, cfg: CodeServerConfig, binary: Path) -> None:
        self.cfg = cfg
        self.binary = binary
        self.port = cfg.port or _free_port(cfg.host)
        self.proc: subprocess.Popen[bytes] | None = None
        self._watch: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}/"

    def _env(self) -> dict[str, str]:
        state = self.cfg.state_dir
        env = dict(os.environ, PASSWORD=self.cfg.password,
                   XDG_CONFIG_HOME=str(state / "config"), XDG_DATA_HOME=str(state / "data"))
        env.pop("HASHED_PASSWORD", None)
        return env

    @property
    def extensions_dir(self) -> Path:
        return Path(os.environ.get(ev.FI_DIST_CODE_SERVER_EXTENSIONS)
                    or self.cfg.state_dir / "extensions")

    def install_extensions(self, timeout: float = 180.0) -> None:
        """Install ``cfg.extensions`` with code-server's ``--install-extension`` (offline).

        Raises:
            RuntimeError: code-server refused one (its output says which and why).
        """
        if not self.cfg.extensions:
            return
        cmd = [str(self.binary), "--extensions-dir", str(self.extensions_dir),
               "--user-data-dir", str(self.cfg.state_dir / "user-data")]
        for vsix in self.cfg.extensions:
            cmd += ["--install-extension", str(vsix)]
        out = subprocess.run([*cmd, "--force"], env=self._env(), capture_output=True,
                             text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        text = (out.stdout + out.stderr).strip()
        if out.returncode != 0 or "Failed" in text:
            raise RuntimeError(f"code-server could not install {', '.join(map(str, self.cfg.extensions))}: "
                               f"{text[-2000:]}")

    def start(self, timeout: float = 60.0) -> CodeServer:
        """Install its extensions, start it and wait until ``/healthz`` answers.

        Raises:
            RuntimeError: it exited or did not answer within ``timeout`` (its log is named),
                or an extension could not be installed.
        """
        state = self.cfg.state_dir
        for sub in ("user-data", "extensions", "config", "data"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        _default_settings(state / "user-data" / "User" / "settings.json")
        self.install_extensions()
        env = self._env()
        cmd = [str(self.binary), "--bind-addr", f"{self.cfg.host}:{self.port}",
               "--auth", "password", "--user-data-dir", str(state / "user-data"),
               "--extensions-dir", str(self.extensions_dir), "--disable-telemetry",
               "--disable-update-check", "--disable-workspace-trust",
               *self.cfg.extra_args, str(self.cfg.folder)]
        log_path = state / "code-server.log"
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=str(self.cfg.folder), stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"code-server exited with {self.proc.returncode}; see {log_path}")
            if self.health() is not None:
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"code-server did not answer on {self.url} within {timeout:g}s; "
                           f"see {log_path}")

    def health(self) -> dict[str, object] | None:
        """code-server's ``/healthz`` JSON (``status``, ``lastHeartbeat``), None if down.

        ``/healthz`` does not count as activity itself, so polling it never keeps an idle
        session alive.
        """
        try:
            with urllib.request.urlopen(self.url + "healthz", timeout=2) as resp:
                return json.loads(resp.read().decode())
        except (OSError, ValueError, urllib.error.URLError):
            return None

    def feed_activity(self, on_activity: Callable[[], None], interval: float = 5.0) -> None:
        """Call ``on_activity`` whenever code-server's heartbeat advances (a user is there)."""
        def watch() -> None:
            last: object = None
            while not self._stop.wait(interval):
                h = self.health()
                if h is None:
                    continue
                # "alive": a request or an open editor within code-server's last minute.
                beat = h.get("lastHeartbeat")
                if h.get("status") == "alive" or (last is not None and beat != last):
                    try:
                        on_activity()
                    except Exception as exc:  # a watcher must survive a failed write
                        log.warning("code-server activity hook failed: %s", exc)
                last = beat

        t = threading.Thread(target=watch, name="fi-dist-code-server-idle", daemon=True)
        t.pydev_do_not_trace = True  # type: ignore[attr-defined]
        t.is_pydev_daemon_thread = True  # type: ignore[attr-defined]
        t.start()
        self._watch = t

    def stop(self, grace: float = 5.0) -> None:
        """End code-server and its children (its own process group)."""
        self._stop.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


SETTINGS = {
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": False,
    "workbench.enableExperiments": False,
    "telemetry.telemetryLevel": "off",
    "extensions.autoCheckUpdates": False,
    "extensions.autoUpdate": False,
    "extensions.ignoreRecommendations": True,
    "update.mode": "none",
    "security.workspace.trust.enabled": False,
}
"""User settings of a fresh code-server: nothing that needs the network or hides the
workbench behind a welcome page (a pod has neither marketplace nor internet)."""


def _default_settings(path: Path) -> None:
    # Only a fresh state directory gets them: a user's own settings stay theirs.
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(SETTINGS, indent=2) + "\n")


def workspace_password(state: Path) -> str:
    """code-server's password, kept (0600) in ``state`` across restarts of the job, so a
    browser logged in before a resume stays in."""
    path = state / "password"
    with contextlib.suppress(OSError):
        rundir.tighten(path, PRIVATE_MODE)  # a file from before fi-dist set modes
        if password := path.read_text().strip():
            return password
    import secrets

    password = secrets.token_hex(16)
    rundir.write_text_atomic(path, password, PRIVATE_MODE)
    return password


def workspace_config(folder: Path, port: int, extensions: Sequence[str | Path] = (),
                     host: str = "127.0.0.1", password: str | None = None
                     ) -> CodeServerConfig:
    """How fi-dist runs code-server for the project in ``folder``: state under
    ``folder/.fi-dist/code-server`` (0700), its password there (unless ``password``), the
    fi-dist extension (when built) plus ``extensions``, listening on ``host``."""
    state = rundir.private_dir(rundir.ensure_root(folder) / "code-server")
    vsix: list[Path] = []
    try:
        vsix.append(editor.vsix_path())
    except editor.MissingVsixError as exc:
        print(f"fi-dist: {exc}; code-server starts without it", file=sys.stderr, flush=True)
    vsix += [Path(e) for e in extensions]
    return CodeServerConfig(folder=folder, state_dir=state,
                            password=password or workspace_password(state), port=port,
                            host=host, extensions=vsix)


def start(cfg: CodeServerConfig, binary: Path | None = None, timeout: float = 60.0
          ) -> CodeServer | None:
    """Start code-server, or None (with the reason on stderr) when it is not installed."""
    binary = binary or find()
    if binary is None:
        print(f"fi-dist: {missing_message()}", file=sys.stderr, flush=True)
        return None
    return CodeServer(cfg, binary).start(timeout)


def start_beside_hub(debug: DebugSettings, folder: Path, run_dir: str | None
                     ) -> CodeServer | None:
    """code-server for a ``fi-dist run --debug --code-server`` job (node 0's agent).

    Says where it is and how to attach, and leaves ``editor.json`` (URL and the password
    file's path, not the password) in the run directory. None when it is not installed
    or did not start (the job runs on; desktop VSCode can still attach).
    """
    try:
        cfg = workspace_config(folder, debug.code_server_port, debug.extensions)
        server = start(cfg)
    except RuntimeError as exc:
        print(f"fi-dist: code-server did not start: {exc}", file=sys.stderr, flush=True)
        return None
    if server is None:
        return None
    password_file = cfg.state_dir / "password"
    if run_dir:
        rundir.write_json(rundir.RunDir(Path(run_dir)).editor_file,
                          {"url": server.url, "password_file": str(password_file),
                           "folder": str(folder)})
    print(f"fi-dist: browser IDE (code-server + the fi-dist extension) on {server.url} "
          f"(password in {password_file}); there, or in desktop VSCode after `fi-dist vscode "
          f"install`: Run and Debug -> '{ATTACH_CONFIG_NAME}'", flush=True)
    return server


class Background:
    """:func:`start_beside_hub` on a thread of its own, so the job's ranks start meanwhile.

    The thread that starts code-server lives until :meth:`stop`: code-server's
    ``PR_SET_PDEATHSIG`` fires when the *thread* that forked it ends, not the process.
    """

    def __init__(self, debug: DebugSettings, folder: Path, run_dir: str | None) -> None:
        self._done = threading.Event()
        self._up = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(debug, folder, run_dir),
                                        name="fi-dist-code-server", daemon=True)
        self._thread.start()

    def _run(self, debug: DebugSettings, folder: Path, run_dir: str | None) -> None:
        server = start_beside_hub(debug, folder, run_dir)
        if server is not None:
            self._up.set()
        self._done.wait()
        if server is not None:
            server.stop()

    def stop(self, linger: float = 0.0, timeout: float = 30.0) -> None:
        """Stop code-server (once it is up, if it is still starting).

        Args:
            linger: seconds it stays up first, when it is up: the browser still has to
                show what the job's end did (debug sessions ended) before it goes.
        """
        if linger > 0 and self._up.is_set():
            time.sleep(linger)
        self._done.set()
        self._thread.join(timeout)
