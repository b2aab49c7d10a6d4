"""``fi-dist vscode install|path``: the fi-dist extension for a desktop VSCode (client side).

``install`` hands the .vsix shipped in the package to the editor's own
``--install-extension`` (offline: no marketplace); ``path`` prints where it is, for
editors installed elsewhere (a remote, an image build).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

from fi_dist import editor
from fi_dist.errors import ConfigError

EDITORS = ("code", "code-insiders", "codium", "code-server")
"""Editor commands tried in order when ``--editor`` is not given."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vscode", help="the fi-dist VSCode extension (debug type fi-dist, "
                       "Ranks view) for a desktop VSCode")
    cmds = p.add_subparsers(dest="vscode_command", required=True)
    q = cmds.add_parser("install", help="install the extension shipped with fi-dist (offline)")
    q.add_argument("--editor", default=None, metavar="COMMAND",
                   help=f"the editor's command line tool (default: the first of "
                        f"{', '.join(EDITORS)} on PATH)")
    q.set_defaults(func=cmd_install)
    q = cmds.add_parser("path", help="print the path of the extension's .vsix")
    q.set_defaults(func=cmd_path)


def find_editor(name: str | None) -> str:
    """The editor command to install with.

    Raises:
        ConfigError: none found; the message says how to name one.
    """
    for candidate in (name,) if name else EDITORS:
        found = shutil.which(candidate)
        if found:
            return found
    tried = name or ", ".join(EDITORS)
    raise ConfigError(f"no VSCode command line found ({tried}); pass --editor PATH, or install "
                      f"the file `fi-dist vscode path` prints with Extensions: Install from VSIX")


def cmd_install(args: argparse.Namespace) -> int:
    vsix = editor.vsix_path()
    tool = find_editor(args.editor)
    out = subprocess.run([tool, "--install-extension", str(vsix), "--force"],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise ConfigError(f"{tool} --install-extension {vsix} failed ({out.returncode}): "
                          f"{(out.stderr or out.stdout).strip()}")
    print(f"fi-dist: installed the fi-dist extension {editor.version()} into {tool}; in VSCode "
          "use Run and Debug -> 'fi-dist: attach all ranks' while a `fi-dist run --debug` "
          "job runs (the Ranks view is in the Run and Debug side bar)")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    print(editor.vsix_path())
    return 0
