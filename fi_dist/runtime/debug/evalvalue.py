"""What ``fi-dist eval`` evaluates in a stopped rank: a value, summarised as compact JSON.

The client sends ``__import__('fi_dist.runtime.debug.evalvalue', fromlist=['_'])
.summarize((EXPR))`` through the hub to each rank's debugger, in the chosen frame; the
summary (not the value) comes back, so ranks are compared without moving tensors:

* a tensor: shape, dtype, device, a checksum of its bytes (SHA-256, 16 hex digits),
  min / max / mean / norm, and its values as float64 (all of them up to
  :data:`MAX_VALUES`, else that many at evenly spaced flat indices, marked ``sampled``)
  for the client's max-abs-difference to rank 0;
* a number: its value; anything else: its ``repr`` (up to 500 characters) and a checksum.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from typing import Any

MAX_VALUES = 2048
"""Values of a tensor sent whole; larger tensors send this many evenly spaced ones."""


def _tensor(t: Any) -> dict[str, Any]:
    torch = sys.modules["torch"]
    t = t.detach()
    cpu = t.to("cpu").contiguous()
    out: dict[str, Any] = {"kind": "tensor", "shape": list(cpu.shape),
                           "dtype": str(cpu.dtype).removeprefix("torch."),
                           "device": str(t.device), "numel": cpu.numel()}
    raw = cpu.reshape(-1).view(torch.uint8).numpy().tobytes() if cpu.numel() else b""
    out["checksum"] = hashlib.sha256(raw).hexdigest()[:16]
    if cpu.is_complex() or cpu.numel() == 0:
        return out
    flat = cpu.reshape(-1).to(torch.float64)
    out["stats"] = {"min": flat.min().item(), "max": flat.max().item(),
                    "mean": flat.mean().item(), "norm": flat.norm().item()}
    if flat.numel() > MAX_VALUES:
        idx = torch.linspace(0, flat.numel() - 1, MAX_VALUES).round().long()
        flat, out["sampled"] = flat[idx], True
    out["values"] = base64.b64encode(flat.numpy().tobytes()).decode()
    return out


def summarize(value: Any) -> str:
    """``value`` as the JSON summary ``fi-dist eval`` compares across ranks."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        data = _tensor(value)
    elif isinstance(value, bool | int | float):
        data = {"kind": "number", "repr": repr(value), "value": float(value)}
    else:
        text = repr(value)
        data = {"kind": "value", "repr": text[:500] + ("..." if len(text) > 500 else ""),
                "checksum": hashlib.sha256(text.encode(errors="replace")).hexdigest()[:16]}
    data["type"] = type(value).__name__
    return json.dumps(data)
