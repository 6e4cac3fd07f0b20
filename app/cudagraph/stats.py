"""``CUDAGraphStats``: the counters of one wrapper, plus a fixed-bucket capture-time histogram.

Not locked by itself: the owning wrapper mutates and snapshots it under its state lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Upper bounds (seconds) of the capture-time histogram, Prometheus style (le=...). Fixed so
# histograms of several wrappers (PIECEWISE pieces) can be summed bucket by bucket.
CAPTURE_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    float("inf"),
)


@dataclass(slots=True)
class CUDAGraphStats:
    """Counters.

    hits: lookups (calls in the wrapper's mode) whose descriptor had a graph, answered by replay.
    misses: lookups whose descriptor had no graph, whether they then captured or ran eagerly.
    captures: graphs captured and kept. replays: replays that answered a lookup.
    evictions: graphs dropped to respect the count limit or the memory budget (not ``clear()``).
    eager_runs: lookups answered eagerly (below the capture threshold, in back-off after a
        failure, or right after a failed capture).
    capture_failures: captures that raised, or produced a graph larger than the memory budget.
    capture_seconds_total: wall seconds of all captures (warm-up included), failed ones too.
    """

    hits: int = 0
    misses: int = 0
    captures: int = 0
    replays: int = 0
    evictions: int = 0
    eager_runs: int = 0
    capture_failures: int = 0
    capture_seconds_total: float = 0.0
    # Per-bucket (non-cumulative) counts, aligned with CAPTURE_SECONDS_BUCKETS.
    capture_seconds_counts: list[int] = field(
        default_factory=lambda: [0] * len(CAPTURE_SECONDS_BUCKETS)
    )

    def record_capture_seconds(self, seconds: float) -> None:
        """One capture attempt took ``seconds`` (successful or not)."""
        self.capture_seconds_total += seconds
        self.capture_seconds_counts[bisect_left(CAPTURE_SECONDS_BUCKETS, seconds)] += 1

    def hit_rate(self) -> float:
        """hits / (hits + misses); 0.0 before any lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def cumulative_buckets(self) -> list[list[float]]:
        """[[upper_bound_seconds, cumulative_count], ...], last bound +Inf."""
        return cumulative_buckets(self.capture_seconds_counts)

    def snapshot(self) -> dict[str, Any]:
        """A plain, JSON-friendly copy of the counters (+Inf stays a float)."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hit_rate(),
            "captures": self.captures,
            "replays": self.replays,
            "evictions": self.evictions,
            "eager_runs": self.eager_runs,
            "capture_failures": self.capture_failures,
            "capture_seconds_total": self.capture_seconds_total,
            "capture_seconds_buckets": self.cumulative_buckets(),
        }


def cumulative_buckets(counts: Iterable[int]) -> list[list[float]]:
    """Turn per-bucket counts into Prometheus' cumulative form."""
    out: list[list[float]] = []
    running = 0
    for bound, count in zip(CAPTURE_SECONDS_BUCKETS, counts, strict=True):
        running += count
        out.append([bound, running])
    return out
