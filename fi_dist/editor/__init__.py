"""fi-dist's VSCode extension, shipped inside the package (``fi_dist/editor/``).

``extension/`` is its source (plain JavaScript on the ``vscode`` API: the ``fi-dist``
debug type whose adapter is the job's hub, and the Ranks view). ``fi-dist.vsix`` is that
source packed by ``@vscode/vsce`` (pinned in ``node-tools/``) at setup
(``scripts/build_extension.sh``, ``make setup``) and shipped as package data, so the
code-server fi-dist starts and ``fi-dist vscode install`` install it offline.

Standard library only: imported by the in-job runtime (code-server on rank 0) and the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

from fi_dist.errors import ConfigError

EXTENSION_ID = "fi-dist.fi-dist"
"""``publisher.name`` of the extension (``extension/package.json``)."""
VSIX_NAME = "fi-dist.vsix"


class MissingVsixError(ConfigError):
    """The package carries no built .vsix (a source checkout before ``make setup``)."""


def extension_dir() -> Path:
    """The extension's source directory inside the package."""
    return Path(__file__).resolve().parent / "extension"


def version() -> str:
    """The extension's version (its package.json)."""
    return str(json.loads((extension_dir() / "package.json").read_text())["version"])


def vsix_path() -> Path:
    """The built extension.

    Raises:
        MissingVsixError: it was not built; the message says how to build it.
    """
    path = Path(__file__).resolve().parent / VSIX_NAME
    if not path.is_file():
        raise MissingVsixError(
            f"the fi-dist VSCode extension is not built ({path} is missing): run `make setup` "
            "or scripts/build_extension.sh (needs npm once; the .vsix then works offline)")
    return path
