"""What a culled node exits with (its settings travel in the contract, fi_dist.contract)."""

from __future__ import annotations

from fi_dist.contract import IDLE_EXIT_CODE

__all__ = ["IDLE_EXIT_CODE"]
