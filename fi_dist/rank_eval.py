"""``fi-dist eval EXPR``: evaluate one expression in every stopped rank, compare the ranks.

Client side. For each rank the hub knows, a *side view* DAP session (it neither replaces
the IDE's view of the rank nor gets its events) finds the stopped main thread, picks
the top frame of the user's code (or the innermost frame of a named function) and
evaluates :func:`fi_dist.runtime.debug.evalvalue.summarize` of EXPR there. The ranks
are then grouped by equal value; tensors are compared by shape, dtype and checksum,
with the max absolute difference to rank 0's values (exact up to 2048 elements, over
2048 evenly spaced elements beyond).
"""

from __future__ import annotations

import ast
import base64
import json
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from fi_dist.dap_client import DapError, DapSession
from fi_dist.hang.stacks import Frame, rank_ranges, ranks_word

SUMMARIZE = "__import__('fi_dist.runtime.debug.evalvalue', fromlist=['_']).summarize(({expr}))"


@dataclass
class RankValue:
    """EXPR's value on one rank (or why there is none)."""

    rank: int
    node: int | None = None
    value: dict[str, Any] | None = None
    frame: str = ""
    """``step at train.py:40``: where it was evaluated."""
    error: str = ""

    def key(self) -> tuple[Any, ...]:
        v = self.value
        if v is None:
            return ("error", self.error)
        if v.get("kind") == "tensor":
            return ("tensor", tuple(v["shape"]), v["dtype"], v["checksum"])
        return (v.get("kind"), v.get("repr"))

    def numbers(self) -> list[float] | None:
        v = self.value or {}
        if v.get("kind") == "number":
            return [float(v["value"])]
        raw = v.get("values")
        if raw is None:
            return None
        data = base64.b64decode(raw)
        return list(struct.unpack(f"<{len(data) // 8}d", data))

    def describe(self) -> str:
        v = self.value
        if v is None:
            return f"({self.error})"
        if v.get("kind") != "tensor":
            return str(v.get("repr"))
        shape = "(" + ", ".join(str(n) for n in v["shape"]) + ("," if len(v["shape"]) == 1
                                                                else "") + ")"
        text = f"tensor {v['dtype']} {shape} checksum {v['checksum']}"
        if "stats" in v:
            text += f" mean {v['stats']['mean']:.6g} max {v['stats']['max']:.6g}"
        return text


@dataclass
class EvalResult:
    expression: str
    values: list[RankValue] = field(default_factory=list)

    def groups(self) -> list[list[RankValue]]:
        found: dict[tuple[Any, ...], list[RankValue]] = {}
        for v in sorted(self.values, key=lambda v: v.rank):
            found.setdefault(v.key(), []).append(v)
        return sorted(found.values(), key=lambda g: (g[0].value is None, g[0].rank))

    def max_diff(self, group: list[RankValue]) -> str:
        """Max |value - rank 0's value| over the group's first rank ("" when not comparable)."""
        base = next((v for v in self.values if v.rank == 0), None)
        if base is None or base.value is None or group[0].value is None:
            return ""
        a, b = base.numbers(), group[0].numbers()
        same_shape = base.value.get("shape") == group[0].value.get("shape")
        if a is None or b is None or len(a) != len(b) or not same_shape:
            return "n/a"
        diff = max((abs(x - y) for x, y in zip(a, b, strict=True)), default=0.0)
        sampled = " (sampled)" if group[0].value.get("sampled") else ""
        return f"{diff:.6g}{sampled}"

    def text(self) -> str:
        groups = self.groups()
        frames = sorted({v.frame for v in self.values if v.frame})
        lines = [f"fi-dist eval {self.expression!r} in "
                 + (frames[0] if len(frames) == 1 else f"{len(frames)} different frames")]
        rows = [(rank_ranges(v.rank for v in g), g[0].describe(), self.max_diff(g))
                for g in groups]
        width = max(len("ranks"), *(len(r[0]) for r in rows))
        lines.append(f"{'ranks':<{width}}  max |x - rank 0|  value")
        lines += [f"{r:<{width}}  {d:<16}  {desc}" for r, desc, d in rows]
        valued = [g for g in groups if g[0].value is not None]
        missing = [v.rank for g in groups for v in g if v.value is None]
        if len(valued) <= 1 and not missing:
            lines.append(f"all {len(self.values)} ranks agree")
        else:
            differ = sorted(v.rank for g in valued if not any(v.rank == 0 for v in g)
                            for v in g)
            verdict = [f"{len(valued)} distinct value{'s' if len(valued) != 1 else ''}"]
            if differ:
                verdict.append(f"{ranks_word(differ)} "
                               f"{'differs' if len(differ) == 1 else 'differ'} from rank 0")
            if missing:
                verdict.append(f"no value from {ranks_word(missing)}")
            lines.append(": ".join(verdict[:2]) + "".join(f"; {v}" for v in verdict[2:]))
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"expression": self.expression,
                "groups": [{"ranks": [v.rank for v in g], "value": g[0].value,
                            "error": g[0].error, "max_abs_diff_to_rank0": self.max_diff(g)}
                           for g in self.groups()],
                "ranks": [{"rank": v.rank, "node": v.node, "frame": v.frame, "error": v.error,
                           "value": v.value} for v in sorted(self.values, key=lambda v: v.rank)]}


def _user_frame(frames: list[dict[str, Any]], name: str | None) -> dict[str, Any] | None:
    if name is not None:
        return next((f for f in frames if f.get("name") == name), None)
    for f in frames:  # innermost first
        path = (f.get("source") or {}).get("path") or ""
        if not Frame(path, 0, "").library and "/fi_dist/" not in path:
            return f
    return frames[0] if frames else None


def _session(config: dict[str, Any], rank: int, timeout: float) -> tuple[DapSession, dict]:
    host, port = config["connect"]["host"], int(config["connect"]["port"])
    session = DapSession(host, port, f"eval rank {rank}")
    try:
        session.request("initialize", {"clientID": "fi-dist-eval", "adapterID": "debugpy",
                                       "pathFormat": "path", "linesStartAt1": True,
                                       "columnsStartAt1": True}, timeout)
        attach = session.send_request("attach", {**config, "fiDistRank": rank,
                                                 "fiDistSideView": True})
        session.wait_event("initialized", timeout)
        session.request("configurationDone", None, timeout)
        return session, session.wait_response(attach, timeout)
    except BaseException:
        session.close()
        raise


def _evaluate(config: dict[str, Any], rank: int, expression: str, frame_name: str | None,
              timeout: float, session: DapSession | None = None) -> RankValue:
    out = RankValue(rank)
    try:
        if session is None:
            session, _ = _session(config, rank, timeout)
        threads = session.request("threads", None, timeout)["body"]["threads"]
        main = next((t for t in threads if str(t.get("name", "")).endswith("MainThread")),
                    threads[0] if threads else None)
        if main is None:
            out.error = "no thread"
            return out
        trace = session.request("stackTrace", {"threadId": main["id"], "startFrame": 0,
                                               "levels": 64}, timeout, check=False)
        if not trace.get("success"):
            out.error = "not stopped (running, or blocked in a collective)"
            return out
        frames = trace["body"]["stackFrames"]
        frame = _user_frame(frames, frame_name)
        if frame is None:
            out.error = f"no frame named {frame_name!r}" if frame_name else "no frame"
            return out
        path = (frame.get("source") or {}).get("path") or "?"
        out.frame = f"{frame.get('name')} at {os.path.basename(path)}:{frame.get('line')}"
        resp = session.request("evaluate", {"expression": SUMMARIZE.format(expr=expression),
                                            "frameId": frame["id"], "context": "clipboard"},
                               timeout, check=False)
        if not resp.get("success"):
            out.error = str(resp.get("message") or "evaluation failed").strip()
            return out
        result = resp["body"]["result"]
        try:
            out.value = json.loads(ast.literal_eval(result))
        except (ValueError, SyntaxError):
            out.error = f"not evaluated: {result[:200]}"
    except (DapError, OSError, KeyError) as exc:
        out.error = str(exc)
    finally:
        if session is not None:
            session.close()
    return out


def evaluate_all(config: dict[str, Any], expression: str, frame: str | None = None,
                 ranks: list[int] | None = None, timeout: float = 30.0) -> EvalResult:
    """EXPR in every rank the hub knows (or ``ranks``), evaluated in parallel.

    Raises:
        DapError: the hub refused (wrong token, rank 0 not connected).
    """
    first, answer = _session(config, 0, timeout)
    known = {int(r): v for r, v in ((answer.get("body") or {}).get("fiDistRanks") or {}).items()}
    wanted = sorted(known) if ranks is None else sorted(ranks)
    results: dict[int, RankValue] = {}

    def one(rank: int) -> None:
        results[rank] = _evaluate(config, rank, expression, frame, timeout,
                                  first if rank == 0 else None)

    threads = [threading.Thread(target=one, args=(r,), daemon=True) for r in wanted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout * 3)
    if 0 not in wanted:
        first.close()
    values = []
    for r in wanted:
        v = results.get(r) or RankValue(r, error="no answer")
        v.node = (known.get(r) or {}).get("node")
        values.append(v)
    return EvalResult(expression, values)
