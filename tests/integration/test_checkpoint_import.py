"""``import fi_dist`` stays light: torch loads only when the Checkpointer is used (a fresh interpreter)."""

from __future__ import annotations


def test_import_fi_dist_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, fi_dist; assert 'torch' not in sys.modules; "
            "fi_dist.Checkpointer; assert 'torch' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
