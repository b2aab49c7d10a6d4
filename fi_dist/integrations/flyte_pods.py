"""Run a Flyte task pod by pod on this machine, through flytekit's own task entrypoint.

In a cluster, flytepropeller starts each pod of a task with the command flytekit
serialized for it (``pyflyte-execute --inputs ... --resolver ... -- task-module M
task-name T``), with the inputs as a protobuf file in blob storage. This module makes
the same two things locally, so ``fi-dist run --pod-entrypoint`` can start N "pods"
running exactly that command with the PyTorchJob pod env::

    python -m fi_dist.integrations.flyte_pods FILE TASK [NAME=VALUE ...] --dir DIR
        # writes DIR/inputs.pb, prints the pod command (run it from FILE's source root)
    python -m fi_dist.integrations.flyte_pods outputs DIR
        # the task's outputs (DIR/outputs/outputs.pb) as JSON, or its error (error.pb)

Client-side tooling (imports flytekit); never imported by a rank.
"""

from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from fi_dist.integrations.flyte import source_root_of

_PLACEHOLDERS = {
    "{{.input}}": "inputs.pb",
    "{{.outputPrefix}}": "outputs",
    "{{.rawOutputDataPrefix}}": "raw",
    "{{.checkpointOutputPrefix}}": "checkpoint",
}


def load_task(file: Path, name: str) -> tuple[Any, str]:
    """The task ``name`` in ``file``, imported under the module name flytekit's resolver
    will use in the pod (the path below the source root, dotted); and that root."""
    file = file.resolve()
    root = source_root_of(str(file))
    module = ".".join(file.relative_to(root).with_suffix("").parts)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    obj = getattr(importlib.import_module(module), name, None)
    if obj is None or not hasattr(obj, "get_command"):
        raise SystemExit(f"flyte_pods: {file} has no flytekit task named {name!r}")
    return obj, str(root)


def parse_inputs(task: Any, pairs: list[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs, converted to the task's declared input types."""
    types = task.python_interface.inputs
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or name not in types:
            raise SystemExit(f"flyte_pods: {pair!r}: expected NAME=VALUE with NAME one of "
                             f"{', '.join(types)}")
        kind = types[name]
        if kind is bool:
            out[name] = raw.lower() in ("1", "true", "yes")
        elif kind in (int, float, str):
            out[name] = kind(raw)
        else:
            out[name] = json.loads(raw)
    return out


def pod_command(task: Any, inputs: dict[str, Any], folder: Path) -> list[str]:
    """Write ``folder/inputs.pb`` and return the pod's command, placeholders filled in the
    way flytepropeller fills them (a previous checkpoint: none)."""
    from flytekit.configuration import ImageConfig, SerializationSettings
    from flytekit.core.context_manager import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    folder.mkdir(parents=True, exist_ok=True)
    ctx = FlyteContextManager.current_context()
    literals = TypeEngine.dict_to_literal_map(ctx, inputs, type_hints={
        k: task.python_interface.inputs[k] for k in inputs})
    (folder / "inputs.pb").write_bytes(literals.to_flyte_idl().SerializeToString())
    cmd = task.get_command(SerializationSettings(image_config=ImageConfig.auto_default_image()))
    out: list[str] = []
    for i, arg in enumerate(cmd):
        if arg == "{{.prevCheckpointPrefix}}":
            out.pop()  # --prev-checkpoint: no previous attempt
            continue
        out.append(str(folder / _PLACEHOLDERS[arg]) if arg in _PLACEHOLDERS else arg)
        assert "{{" not in out[-1], f"unfilled placeholder {cmd[i]}"
    return out


def read_outputs(folder: Path) -> dict[str, Any]:
    """``{"outputs": {name: value}}`` or ``{"error": message}`` of a finished task."""
    from flyteidl.core import errors_pb2, literals_pb2

    error = folder / "outputs" / "error.pb"
    if error.is_file():
        doc = errors_pb2.ErrorDocument()
        doc.ParseFromString(error.read_bytes())
        return {"error": doc.error.message}
    pb = literals_pb2.LiteralMap()
    pb.ParseFromString((folder / "outputs" / "outputs.pb").read_bytes())
    values = {}
    for name, lit in pb.literals.items():
        prim = lit.scalar.primitive
        values[name] = getattr(prim, prim.WhichOneof("value") or "string_value")
    return {"outputs": values}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["outputs"]:
        p = argparse.ArgumentParser(prog="flyte_pods outputs")
        p.add_argument("dir", type=Path)
        args = p.parse_args(argv[1:])
        print(json.dumps(read_outputs(args.dir)))
        return 0
    p = argparse.ArgumentParser(prog="python -m fi_dist.integrations.flyte_pods",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="the Python file that defines the task")
    p.add_argument("task", help="the task's name in that file")
    p.add_argument("inputs", nargs="*", metavar="NAME=VALUE", help="the task's inputs")
    p.add_argument("--dir", type=Path, required=True,
                   help="where inputs.pb, outputs/ and raw/ go (like the execution's bucket)")
    args = p.parse_intermixed_args(argv)
    task, root = load_task(args.file, args.task)
    cmd = pod_command(task, parse_inputs(task, args.inputs), args.dir.resolve())
    print(f"flyte_pods: run the pods from {root} (the task's source root)", file=sys.stderr)
    print(shlex.join(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
