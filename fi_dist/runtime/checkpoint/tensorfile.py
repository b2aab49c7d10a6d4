"""The tensor file: a safetensors file written straight from tensor memory, read back into it.

::

    [u64 little-endian N][N bytes of JSON header, space-padded to 8][tensor bytes, back to back]

The header is safetensors' own (``{name: {dtype, shape, data_offsets}, "__metadata__":
{...}}``), so any safetensors reader opens the file; fi-dist adds one metadata entry,
``fi_dist.tree``: the saved object's structure (dicts with their key types, lists, tuples,
numbers, strings, an ``OrderedDict``'s ``_metadata``) as tagged JSON in which each tensor
(and each numeric numpy array or scalar) is a reference to its entry. A model's state
dict keeps its own keys as tensor names.

Writing: the header, then each tensor's bytes from its own storage (no serialisation
copy, large sequential writes). Reading: the header, then each tensor read into freshly
allocated memory with large reads; every byte is hashed on the way (see
:mod:`~fi_dist.runtime.checkpoint.hashing`) and nothing is decoded before the caller has
checked the checksum. The header is validated before anything is allocated, so a
corrupt one cannot ask for more memory than the file holds.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
from collections import OrderedDict
from typing import Any

import torch

from fi_dist.runtime.checkpoint.hashing import HashingReader

SUFFIX = ".safetensors"
TREE_KEY = "fi_dist.tree"
MAX_HEADER = 256 << 20
SMALL = 1 << 20
"""Tensors below this are read in groups (one syscall per group, not per tensor)."""

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
"""torch dtype -> safetensors dtype name; other dtypes are pickled into the tree."""
BY_NAME = {v: k for k, v in DTYPES.items()}


class FormatError(ValueError):
    """A tensor file's header or tree does not describe a valid file."""


# --- the tree: structure as tagged JSON, tensors by name ---------------------------------
def _is_plain_tensor(obj: Any) -> bool:
    return (type(obj) is torch.Tensor and obj.layout == torch.strided and obj.dtype in DTYPES
            and not obj.is_quantized)


def _numpy_tensor(obj: Any) -> torch.Tensor | None:
    """A tensor sharing the memory of a numeric numpy array or scalar, else None."""
    np = sys.modules.get("numpy")  # never imported here: only objects that exist count
    if np is None or not isinstance(obj, np.ndarray | np.generic) or obj.dtype.kind not in "biuf":
        return None
    a = np.asarray(obj)  # a scalar becomes a 0-d array (ascontiguousarray would make it 1-d)
    try:
        t = torch.from_numpy(a if a.flags.c_contiguous else np.ascontiguousarray(a))
    except TypeError:  # a numpy dtype torch lacks
        return None
    return t if t.dtype in DTYPES else None


class _Encoder:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def name_for(self, path: tuple[Any, ...]) -> str:
        base = ".".join(str(p) for p in path) or "tensor"
        name, i = base, 1
        while name in self.tensors or name == "__metadata__":
            name, i = f"{base}#{i}", i + 1
        return name

    def encode(self, obj: Any, path: tuple[Any, ...]) -> Any:
        if obj is None or type(obj) in (bool, int, float, str):
            return obj
        if _is_plain_tensor(obj):
            name = self.name_for(path)
            self.tensors[name] = obj
            return {"t": name}
        arr = _numpy_tensor(obj)
        if arr is not None:  # numpy arrays "n", numpy scalars "g"
            name = self.name_for(path)
            self.tensors[name] = arr
            return {"n" if type(obj).__name__ == "ndarray" else "g": name}
        if type(obj) in (dict, OrderedDict):
            out: dict[str, Any] = {"d": [[self.encode(k, ()), self.encode(v, (*path, k))]
                                         for k, v in obj.items()]}
            if type(obj) is OrderedDict:
                out["o"] = 1
            meta = getattr(obj, "_metadata", None)
            if meta is not None:  # module versions, read by load_state_dict
                out["m"] = self.encode(meta, ("_metadata",))
            return out
        if type(obj) is list:
            return {"l": [self.encode(v, (*path, i)) for i, v in enumerate(obj)]}
        if type(obj) is tuple:
            return {"u": [self.encode(v, (*path, i)) for i, v in enumerate(obj)]}
        # Anything else (numpy arrays, odd dtypes, custom types) travels pickled, and is
        # loaded back with weights_only=True like every format-1 file.
        buf = io.BytesIO()
        torch.save(obj, buf)
        return {"p": base64.b64encode(buf.getvalue()).decode()}


def encode(obj: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """(tree JSON, tensors by name) for ``obj``; a top-level dict's keys name its tensors."""
    enc = _Encoder()
    tree = enc.encode(obj, ())
    return json.dumps(tree, separators=(",", ":")), enc.tensors


def decode(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the object :func:`encode` described.

    Raises:
        FormatError: the tree is malformed or refers to a tensor that is not there.
    """
    if tree is None or type(tree) in (bool, int, float, str):
        return tree
    if type(tree) is not dict or len(tree.keys() - {"o", "m"}) != 1:
        raise FormatError(f"bad tree node {str(tree)[:80]!r}")
    for tag in ("t", "n", "g"):
        if tag in tree:
            try:
                t = tensors[tree[tag]]
            except (KeyError, TypeError):
                raise FormatError(f"tree refers to a missing tensor {tree[tag]!r}") from None
            return t if tag == "t" else t.numpy() if tag == "n" else t.numpy()[()]
    if "d" in tree:
        out: dict[Any, Any] = OrderedDict() if tree.get("o") else {}
        for k, v in tree["d"]:
            out[decode(k, tensors)] = decode(v, tensors)
        if "m" in tree and isinstance(out, OrderedDict):
            out._metadata = decode(tree["m"], tensors)  # type: ignore[attr-defined]
        return out
    if "l" in tree:
        return [decode(v, tensors) for v in tree["l"]]
    if "u" in tree:
        return tuple(decode(v, tensors) for v in tree["u"])
    if "p" in tree:
        return torch.load(io.BytesIO(base64.b64decode(tree["p"])), map_location="cpu",
                          weights_only=True)
    raise FormatError(f"bad tree node {str(tree)[:80]!r}")


# --- writing ------------------------------------------------------------------------------
def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of ``t`` as stored: a view of its memory when it is contiguous on the CPU."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy()).cast("B")  # type: ignore[arg-type]


class Prepared:
    """A file ready to be written: its header and its tensors' bytes (no copies made)."""

    def __init__(self, obj: Any) -> None:
        tree, tensors = encode(obj)
        header: dict[str, Any] = {"__metadata__": {"format": "pt", TREE_KEY: tree}}
        self.buffers: list[memoryview] = []
        offset = 0
        for name, t in tensors.items():
            mv = tensor_bytes(t)
            header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [offset, offset + mv.nbytes]}
            self.buffers.append(mv)
            offset += mv.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
        self.header = struct.pack("<Q", len(raw)) + raw
        self.size = len(self.header) + offset

    def write_to(self, w: Any) -> None:
        w.write(self.header)
        for mv in self.buffers:
            w.write(mv)


# --- reading ------------------------------------------------------------------------------
def _entries(header: dict[str, Any], body: int) -> list[tuple[str, torch.dtype, list[int], int, int]]:
    out = []
    for name, e in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = BY_NAME[e["dtype"]]
            shape = [int(s) for s in e["shape"]]
            begin, end = (int(x) for x in e["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"bad header entry for {name!r}") from None
        numel = 1
        for s in shape:
            if s < 0:
                raise FormatError(f"{name!r}: negative dimension")
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - begin != numel * itemsize:
            raise FormatError(f"{name!r}: {end - begin} bytes for shape {shape} of {e['dtype']}")
        out.append((name, dtype, shape, begin, end))
    out.sort(key=lambda x: x[3])
    pos = 0
    for name, _, _, begin, end in out:
        if begin != pos:
            raise FormatError(f"{name!r}: data starts at {begin}, expected {pos}")
        pos = end
    if pos != body:
        raise FormatError(f"tensors cover {pos} bytes, the file holds {body}")
    return out


def read(r: HashingReader, size: int, into: dict[str, torch.Tensor] | None = None,
         ) -> tuple[str, dict[str, torch.Tensor]]:
    """Read a whole tensor file of ``size`` bytes: (tree JSON, tensors), NOT yet decoded.

    The caller checks ``r.hexdigest()`` before calling :func:`decode` on the result.

    Args:
        into: tensors to read straight into, by name (a live model's state: then
            ``load_state_dict`` copies nothing); used where dtype, shape, device (CPU)
            and layout (contiguous) match, fresh memory elsewhere. They are written
            before the checksum is known.

    Raises:
        FormatError: the header is malformed or inconsistent with ``size``.
        EOFError: the file is shorter than it says.
    """
    (n,) = struct.unpack("<Q", r.read_exact(8))
    if n > min(MAX_HEADER, size - 8):
        raise FormatError(f"header of {n} bytes in a file of {size}")
    try:
        header = json.loads(r.read_exact(n))
        tree = header["__metadata__"][TREE_KEY]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"unreadable header ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or not isinstance(tree, str):
        raise FormatError("unreadable header")
    entries = _entries(header, size - 8 - n)
    tensors: dict[str, torch.Tensor] = {}
    group: list[tuple[str, torch.Tensor, int]] = []
    group_bytes = 0

    def flush_group() -> None:
        nonlocal group, group_bytes
        if not group:
            return
        buf = torch.empty(group_bytes, dtype=torch.uint8)
        if r.readinto(buf.numpy()) != group_bytes:
            raise EOFError("file ends inside a tensor")
        pos = 0
        for _, t, nb in group:
            t.reshape(-1).view(torch.uint8).copy_(buf[pos:pos + nb])
            pos += nb
        group, group_bytes = [], 0

    for name, dtype, shape, begin, end in entries:
        t = (into or {}).get(name)
        if (t is None or t.dtype != dtype or list(t.shape) != shape or t.device.type != "cpu"
                or not t.is_contiguous()):
            t = torch.empty(shape, dtype=dtype)
        tensors[name] = t
        nb = end - begin
        if nb == 0:
            continue
        if nb < SMALL:
            group.append((name, t, nb))
            group_bytes += nb
            if group_bytes >= SMALL:
                flush_group()
            continue
        flush_group()
        if r.readinto(t.reshape(-1).view(torch.uint8).numpy()) != nb:
            raise EOFError("file ends inside a tensor")
    flush_group()
    return tree, tensors
