"""VSCode's ``.vscode/launch.json``: fi-dist's configurations, edited the way VSCode does.

Shared core, used by the hub inside the job (the attach configuration), the Flyte
session (the resume configuration) and ``fi-dist attach JOB`` on the client; it imports
neither side. launch.json is JSONC (comments, trailing commas) and belongs to the user,
so fi-dist never re-serializes it: like VSCode's ``jsonc-parser`` (``modify`` ->
``applyEdits``) it computes text edits that insert or replace only the configuration
with fi-dist's ``name`` and applies them to the raw text. Everything else (comments,
formatting, the other configurations) stays byte for byte.

The JSONC parser is json-five (``json5.loader.ModelLoader``, imported as ``json5``): pure
Python, installs from a wheel and runs offline, reads JSONC as the subset of JSON5 it
is, and keeps each node's source position, which is all the edits need. jsonc-edit, the
binding of Microsoft's jsonc-parser, was not taken: it runs ``node`` and on first use
``npm install``s jsonc-parser into ``~/.jsonc-edit`` (its ``_runtime.py``), which a
training pod (where the hub writes launch.json) has neither node nor network for.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fi_dist.errors import FiDistError
from fi_dist.rundir import write_text_atomic

ATTACH_CONFIG_NAME = "fi-dist: attach all ranks"
"""The configuration that attaches to the hub (every rank); written by the hub and
``fi-dist attach JOB``, replaced on every run. Its type is ``fi-dist``: the fi-dist
VSCode extension's debugger, whose adapter is the hub (no other extension needed)."""
DEBUGPY_CONFIG_NAME = "fi-dist: attach all ranks (Python Debugger)"
"""The same attach with type ``debugpy``, for a VSCode that has Microsoft's Python
Debugger extension and not fi-dist's."""
DEBUG_TYPE = "fi-dist"
"""The fi-dist extension's debug type (fi_dist/editor/extension/package.json)."""
TOKEN_KEY = "fiDistToken"
"""The attach argument carrying the job token: a launch.json holding it is kept 0600."""
PRIVATE_MODE = 0o600


class LaunchJsonError(FiDistError):
    """A launch.json that even a JSONC parser cannot read, or whose shape we cannot edit."""


def attach_config(host: str, port: int, token: str) -> dict[str, Any]:
    """The VSCode attach configuration that reaches every rank through the hub.

    VSCode sends a configuration's fields as the ``attach`` arguments, so the token
    travels as ``fiDistToken``; ``justMyCode: false`` lets a user step into torch.
    """
    return {"name": ATTACH_CONFIG_NAME, "type": DEBUG_TYPE, "request": "attach",
            "connect": {"host": host, "port": port}, "justMyCode": False, TOKEN_KEY: token}


def debugpy_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` for Microsoft's Python Debugger (type ``debugpy``): the hub answers it
    as debugpy's own adapter would."""
    return {**config, "name": DEBUGPY_CONFIG_NAME, "type": "debugpy"}


def attach_configurations(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What goes into launch.json for one attach: the fi-dist type, then the debugpy one."""
    return [config, debugpy_config(config)]


def launch_json_path(folder: Path) -> Path:
    """``folder/.vscode/launch.json``, where VSCode looks for a workspace folder's configs."""
    return folder / ".vscode" / "launch.json"


def write_configuration(folder: Path, config: dict[str, Any]) -> Path:
    """:func:`write_configurations` of one configuration."""
    return write_configurations(folder, [config])


def write_configurations(folder: Path, configs: list[dict[str, Any]]) -> Path:
    """Insert or replace ``configs`` (each by ``name``) in ``folder``'s launch.json, in
    one write; returns its path.

    The file is written atomically. A new file is created 0600; an existing one keeps
    its mode, tightened to at most 0600 once it holds a job token. A symlinked
    launch.json (dotfiles) is written through the link.

    Raises:
        LaunchJsonError: the file is not JSONC, or not a launch.json we can edit (the
            file is left as it was; the message names it and the problem).
        OSError: it cannot be read or written.
    """
    path = launch_json_path(folder)
    if path.is_symlink():
        path = path.resolve()
    try:
        old_mode: int | None = stat.S_IMODE(path.stat().st_mode)
        raw = path.read_bytes()
    except FileNotFoundError:
        old_mode, raw = None, b""
    try:
        text = raw.decode("utf-8")
        new = text
        for config in configs:
            new = upsert(new, config)
    except (LaunchJsonError, UnicodeDecodeError) as exc:
        names = ", ".join(repr(c.get("name")) for c in configs)
        raise LaunchJsonError(f"{path}: {exc}; the file was left unchanged (fix it, or add "
                              f"the configuration {names} by hand)") from None
    if old_mode is None:
        mode = PRIVATE_MODE
    elif _holds_token(new):
        mode = old_mode & PRIVATE_MODE
    else:
        mode = old_mode
    if new != text or mode != old_mode:
        write_text_atomic(path, new, mode)
    return path


# --- the edit model (jsonc-parser's modify / applyEdits) ---------------------------------

@dataclass(frozen=True)
class Edit:
    """Replace ``length`` characters at ``offset`` with ``content``."""

    offset: int
    length: int
    content: str


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply non-overlapping edits (offsets into the original ``text``)."""
    for e in sorted(edits, key=lambda e: e.offset, reverse=True):
        text = text[:e.offset] + e.content + text[e.offset + e.length:]
    return text


def upsert(text: str, config: dict[str, Any]) -> str:
    """``text`` with ``config`` inserted, or put in place of the configuration of its name."""
    new = apply_edits(text, upsert_edits(text, config))
    mine = [c for c in _configurations(_parse(new)) if _name(c) == config["name"]]
    if len(mine) != 1 or _value(new, mine[0]) != config:  # never write what we cannot read
        raise LaunchJsonError("editing it did not give back the configuration (a fi-dist bug)")
    return new


def upsert_edits(text: str, config: dict[str, Any]) -> list[Edit]:
    """The edits that put ``config`` into the ``configurations`` of a launch.json text.

    Replaces the first configuration named like ``config`` (later ones of that name are
    removed), else appends it after the last configuration; adds ``configurations``
    (and, for an empty or comment-only file, the whole document) when missing.

    Raises:
        LaunchJsonError: not JSONC, the top level is not an object, or
            ``configurations`` is not a list.
    """
    fmt = _Format.of(text)
    root = _parse(text)
    if root is None:  # empty, or only whitespace and comments
        doc = {"version": "0.2.0", "configurations": [config]}
        sep = "" if not text or text.endswith("\n") else fmt.eol
        return [Edit(len(text), 0, sep + fmt.dump(doc, "") + fmt.eol)]
    from json5 import model

    if not isinstance(root, model.JSONObject):
        raise LaunchJsonError(f"the top level is {_kind(root)}, not an object")
    found = [v for k, v in zip(root.keys, root.values, strict=True)
             if _key(k) == "configurations"]
    if not found:
        value = fmt.dump([config], fmt.member_indent(text, root))
        return [fmt.insert_member(text, root, f'"configurations": {value}')]
    array = found[-1]  # a repeated key: the last one wins, as in json.loads
    if not isinstance(array, model.JSONArray):
        raise LaunchJsonError(f'"configurations" is {_kind(array)}, not a list')
    same = [i for i, c in enumerate(array.values) if _name(c) == config["name"]]
    if not same:
        return [fmt.insert_member(text, array, fmt.dump(config, fmt.member_indent(text, array)))]
    first = array.values[same[0]]
    start, end = _span(first)
    edits = [Edit(start, end - start, fmt.dump(config, _line_indent(text, start)))]
    for i in same[1:]:  # a duplicate goes with the comma before it
        cut_from, cut_to = _span(array.values[i - 1])[1], _span(array.values[i])[1]
        edits.append(Edit(cut_from, cut_to - cut_from, ""))
    return edits


@dataclass(frozen=True)
class _Format:
    """What inserted text looks like: the file's own indent unit and line ending."""

    unit: str
    eol: str

    @classmethod
    def of(cls, text: str) -> _Format:
        eol = "\r\n" if "\r\n" in text else "\n"
        widths = []
        for line in text.splitlines():
            lead = line[:len(line) - len(line.lstrip(" \t"))]
            if lead.startswith("\t") and line.strip():
                return cls("\t", eol)
            if lead and line.strip():
                widths.append(len(lead))
        return cls(" " * min(min(widths, default=4), 8), eol)  # VSCode's default: 4 spaces

    def dump(self, value: Any, indent: str) -> str:
        """``value`` as JSON whose lines after the first are indented by ``indent``."""
        return json.dumps(value, indent=self.unit).replace("\n", self.eol + indent)

    def member_indent(self, text: str, container: Any) -> str:
        """The indent of a member of ``container``: like its last member, else one unit in."""
        members = container.values
        if members:
            start = _span(members[-1])[0]
            if _line_start(text, start) != _line_start(text, _span(container)[0]):
                return _line_indent(text, start)
        return _line_indent(text, _span(container)[0]) + self.unit

    def insert_member(self, text: str, container: Any, member: str) -> Edit:
        """Insert ``member`` (an element, or ``"key": value``) as ``container``'s last one."""
        indent = self.member_indent(text, container)
        start, end = _span(container)
        if container.values:  # right after the last member; a trailing comma then follows ours
            return Edit(_span(container.values[-1])[1], 0, "," + self.eol + indent + member)
        closing = "" if "\n" in text[start:end] else self.eol + _line_indent(text, start)
        return Edit(start + 1, 0, self.eol + indent + member + closing)


# --- reading the JSONC model --------------------------------------------------------------

def _parse(text: str) -> Any | None:
    """The top-level value's node, or None for a text of whitespace and comments only."""
    try:
        import json5
        from json5.loader import ModelLoader
        from json5.tokenizer import tokenize
    except ImportError:  # pragma: no cover - an environment problem, said plainly
        raise LaunchJsonError("reading launch.json needs json-five (pip install json-five); "
                              "another package named json5 may have replaced it") from None
    try:
        if all(t.type in ("WHITESPACE", "LINE_COMMENT", "BLOCK_COMMENT")
               for t in tokenize(text)):
            return None
        return json5.loads(text, loader=ModelLoader()).value
    except ValueError as exc:  # JSON5DecodeError is a json.JSONDecodeError
        raise LaunchJsonError(f"not valid JSON with comments: {exc}") from None


def _span(node: Any) -> tuple[int, int]:
    # json-five keeps each node's first and last token; their offsets are exact (its
    # public line/column pair is not, for a token that spans lines). Pinned in constraints.
    return node._tok.index, node._end_tok.end


def _line_start(text: str, offset: int) -> int:
    return text.rfind("\n", 0, offset) + 1


def _line_indent(text: str, offset: int) -> str:
    line = text[_line_start(text, offset):offset]
    return line[:len(line) - len(line.lstrip(" \t"))]


def _key(node: Any) -> str:
    return node.characters if hasattr(node, "characters") else node.name


def _kind(node: Any) -> str:
    return {"JSONArray": "a list", "JSONObject": "an object"}.get(type(node).__name__,
                                                                   "a scalar")


def _configurations(root: Any) -> list[Any]:
    from json5 import model

    if not isinstance(root, model.JSONObject):
        return []
    found = [v for k, v in zip(root.keys, root.values, strict=True)
             if _key(k) == "configurations"]
    return found[-1].values if found and isinstance(found[-1], model.JSONArray) else []


def _name(node: Any) -> str | None:
    """A configuration's ``name``, or None when it is not an object with a string name."""
    from json5 import model

    if not isinstance(node, model.JSONObject):
        return None
    names = [v.characters for k, v in zip(node.keys, node.values, strict=True)
             if _key(k) == "name" and isinstance(v, model.String)]
    return names[-1] if names else None


def _value(text: str, node: Any) -> Any:
    """The Python value of one node, read from its own span of the text."""
    import json5

    start, end = _span(node)
    return json5.loads(text[start:end])


def _holds_token(text: str) -> bool:
    values = (_value(text, c) for c in _configurations(_parse(text)))
    return any(isinstance(v, dict) and TOKEN_KEY in v for v in values)
