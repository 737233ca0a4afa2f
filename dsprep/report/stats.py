"""Small numeric helpers shared by the report: distribution summaries, histograms and bounded example lists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MAX_EXAMPLES", "Tally", "histogram", "nearest_rank", "over", "summary"]

MAX_EXAMPLES = 5


@dataclass
class Tally:
    """A count with up to MAX_EXAMPLES examples (`location` plus a detail)."""

    count: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    def add(self, location: str, detail: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"location": location, "detail": detail})

    def merge(self, later: Tally) -> None:
        """Add a tally of what came after this one's rows (its examples follow this one's)."""
        self.count += later.count
        self.examples.extend(later.examples[: MAX_EXAMPLES - len(self.examples)])

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": self.examples}


def summary(values: np.ndarray) -> dict[str, Any]:
    """count, min, mean, p50, p90, p99, max of integer values (zeros when empty); the percentiles by nearest rank."""
    if not len(values):
        return {"count": 0, "min": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    p50, p90, p99 = nearest_rank(values, (50, 90, 99))
    return {"count": len(values), "min": int(values.min()), "mean": round(float(values.mean()), 2),
            "p50": int(p50), "p90": int(p90), "p99": int(p99), "max": int(values.max())}  # fmt: skip


def nearest_rank(values: np.ndarray, percents: Sequence[int]) -> list[int]:
    """For each p in `percents`, the smallest of `values` (not empty) with at least p% of them at or below it."""
    ranks = [max(-(-p * len(values) // 100), 1) - 1 for p in percents]  # ceil(p% of n), 1-based
    ordered = np.partition(values, sorted(set(ranks)))
    return [int(ordered[r]) for r in ranks]


def histogram(values: np.ndarray, *, bins: int = 24, mark: int | None = None) -> dict[str, Any]:
    """Counts over power-of-two-ish bins ([edges[i], edges[i+1])), so long tails stay readable. `mark` (a limit such
    as --max-len) is kept, and a bin ends at it, so that every bin holds values either all at most `mark` or all
    over it."""
    if not len(values):
        return {"edges": [0, 1], "counts": [0], "mark": mark}
    hi = max(int(values.max()), 1)
    edges = np.unique(np.round(np.geomspace(1, hi + 1, num=bins + 1)).astype(np.int64))
    edges = np.concatenate([[0], edges]) if edges[0] > 0 else edges
    edges[-1] = max(int(edges[-1]), hi + 1)
    if mark is not None and 0 < mark + 1 < edges[-1]:
        edges = np.union1d(edges, [mark + 1])
    counts, _ = np.histogram(values, bins=edges)
    return {"edges": [int(e) for e in edges], "counts": [int(c) for c in counts], "mark": mark}


def over(upper: int, mark: int | None) -> bool:
    """Whether a histogram bin that ends before `upper` may hold values over `mark` (none when `mark` is None)."""
    return mark is not None and upper - 1 > mark
