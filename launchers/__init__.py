"""Launcher backends, shipped as ``fi_dist.launchers`` (see pyproject's package-dir)."""
