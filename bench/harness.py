"""Tiny benchmark harness: run a baseline and a candidate alternately, report ratios.

Baseline and candidate run in the same invocation, interleaved, so machine load
affects both alike; the figures that matter are the ratios of their medians.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Series:
    name: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


def interleave(reps: int, runs: dict[str, Callable[[], dict[str, float]]]) -> dict[str, dict[str, Series]]:
    """Call each run ``reps`` times, alternating; collect every metric it returns."""
    out: dict[str, dict[str, Series]] = {name: {} for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            for metric, value in fn().items():
                out[name].setdefault(metric, Series(metric)).values.append(value)
    return out


def report(results: dict[str, dict[str, Series]], baseline: str, candidate: str,
           goals: dict[str, str]) -> str:
    """A table of medians and candidate/baseline ratios, with each metric's goal."""
    lines = [f"{'metric':<28}{baseline:>14}{candidate:>14}{'ratio':>9}  goal"]
    for metric, series in results[baseline].items():
        b, c = series.median, results[candidate][metric].median
        lines.append(f"{metric:<28}{b:>14.3f}{c:>14.3f}{c / b:>9.3f}  {goals.get(metric, '')}")
    return "\n".join(lines)
