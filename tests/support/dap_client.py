"""The tests' DAP client is the package's own: :mod:`fi_dist.dap_client` (``fi-dist eval``
uses it too)."""

from __future__ import annotations

from fi_dist.dap_client import DapError, DapSession, JobClient, handshake

__all__ = ["DapError", "DapSession", "JobClient", "handshake"]
