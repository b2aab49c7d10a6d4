"""Find launchers by name; a backend's module is imported only when asked for.

Heavy clients (kubernetes, ray) live inside those modules, so ``import fi_dist`` and
the local launcher never pay for them.
"""

from __future__ import annotations

import importlib

from fi_dist.errors import UnknownLauncherError
from fi_dist.launcher import Launcher

# name -> module under fi_dist.launchers exporting ``create_launcher()``.
_BACKENDS: dict[str, str] = {
    "local": "local",
    "pytorchjob": "pytorchjob",
    "ray": "ray",
    "rayjob": "kuberay",
    "trainjob": "trainjob",
}


def register(name: str, module: str) -> None:
    """Register a backend module (``fi_dist.launchers.<module>`` or a full dotted path)."""
    _BACKENDS[name] = module


def names() -> list[str]:
    return sorted(_BACKENDS)


def get_launcher(name: str) -> Launcher:
    """The launcher registered as ``name``.

    Raises:
        UnknownLauncherError: nothing is registered under ``name``.
    """
    module = _BACKENDS.get(name)
    if module is None:
        raise UnknownLauncherError(
            f"unknown launcher {name!r}; known launchers: {', '.join(names())}"
        )
    path = module if "." in module else f"fi_dist.launchers.{module}"
    return importlib.import_module(path).create_launcher()
