"""What a fresh interpreter imports: the package, the CLI and every dry-run work when
kubernetes, ray and flytekit cannot be imported (torchx's no-import test), and the
decorator switched off imports nothing heavy.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("kubernetes", "kubeflow", "ray", "flytekit", "flytekitplugins")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {BLOCKED!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{{name}} is blocked by the no-import test")
            return None

    sys.meta_path.insert(0, Blocker())
    # Namespace-package .pth files (flytekitplugins) create a module object at startup.
    AT_START = set(sys.modules)
""")


def run_blocked(body: str) -> subprocess.CompletedProcess[str]:
    code = BLOCKER + textwrap.dedent(body) + textwrap.dedent(f"""
        leaked = sorted(m for m in set(sys.modules) - AT_START
                        if m.split(".")[0] in {BLOCKED!r})
        assert not leaked, leaked
    """)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_blocker_really_blocks() -> None:
    out = run_blocked("import ray\n")
    assert out.returncode != 0 and "blocked by the no-import test" in out.stderr


def test_package_and_cli_import() -> None:
    out = run_blocked("""
        import fi_dist, fi_dist.cli, fi_dist.registry, fi_dist.launcher
        import fi_dist.k8s.validation, fi_dist.k8s.pytorchjob, fi_dist.job_commands
        import fi_dist.launchers.pytorchjob, fi_dist.launchers.ray, fi_dist.launchers.kuberay
        import fi_dist.launchers.trainjob, fi_dist.launchers.local
        fi_dist.cli.build_parser()
    """)
    assert out.returncode == 0, out.stderr


LAUNCHERS = ("pytorchjob", "rayjob", "trainjob", "ray", "local")


def test_dry_run_without_heavy_clients() -> None:
    # One interpreter for every launcher: each dry-run must leave the blocked set alone.
    out = run_blocked(f"""
        from fi_dist.cli import main
        for launcher in {LAUNCHERS!r}:
            policy = ["--network-policy"] if launcher == "pytorchjob" else []
            rc = main(["run", "--dry-run", "--launcher", launcher, "--image", "img:1",
                       "--nnodes", "2", "--nproc-per-node", "2", "--master-port",
                       "0" if launcher == "local" else "29500", "--debug", *policy,
                       "examples/ddp_train.py", "--", "--steps", "3"])
            assert rc == 0, (launcher, rc)
            print("DONE", launcher, flush=True)
    """)
    assert out.returncode == 0, out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines()
            if line.startswith("DONE")] == list(LAUNCHERS)
    assert out.stdout.count("examples/ddp_train.py") >= len(LAUNCHERS)


def test_cluster_command_without_kubernetes_says_what_is_missing() -> None:
    out = run_blocked("""
        try:
            from fi_dist.launchers.pytorchjob import create_launcher
            create_launcher().status("job")
        except ImportError as exc:
            assert "kubernetes" in str(exc)
            sys.modules.pop("kubernetes", None)
        else:
            raise AssertionError("status() worked without kubernetes")
    """)
    assert out.returncode == 0, out.stderr


def test_off_is_a_plain_call_that_imports_nothing_heavy() -> None:
    code = textwrap.dedent("""
        import sys
        from fi_dist import interactive_pytorch

        @interactive_pytorch
        def f(a, b=2):
            return a * b

        assert f(3) == 6 and f.__name__ == "f" and f.__wrapped__(1) == 2
        heavy = [m for m in ("torch", "debugpy", "fi_dist.runtime.interactive") if m in sys.modules]
        print(heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
