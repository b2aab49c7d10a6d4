"""What a culled node exits with (its settings travel in the contract, fi_dist.contract)."""

from __future__ import annotations

IDLE_EXIT_CODE = 75
"""Exit code of a node agent whose node the culler ended.

In 1..127, so ``restartPolicy: ExitCode`` (and the local launcher's ``--max-restarts``)
treats it as final: restarting a job nobody uses would only hold the GPUs again. It
differs from 1 (a bug), 143 (SIGTERM / preemption, retried) and 137 (SIGKILL).
"""
