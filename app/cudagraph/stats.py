"""``CUDAGraphStats``: the counters of one graph cache, plus a fixed-bucket capture-time
histogram; ``CacheSnapshot``: the typed, frozen copy the readers get.

Not locked by itself: the owning cache mutates and snapshots it under its state lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

# Upper bounds (seconds) of the capture-time histogram, Prometheus style (le=...).
CAPTURE_SECONDS_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf")
)  # fmt: skip


@dataclass(slots=True)
class CUDAGraphStats:
    """Counters. hits / misses: lookups (one per logical forward) with / without a graph.
    captures: graphs captured and kept. evictions: not counting ``clear()``. eager_runs: lookups
    answered eagerly (below the threshold, waiting for an idle gap, in back-off, or right after
    a failed capture). capture_failures: captures that raised or did not fit the budget.
    capture_seconds_total: all capture attempts, warm-up included."""

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

    def cumulative_buckets(self) -> tuple[tuple[float, int], ...]:
        """((upper_bound_seconds, cumulative_count), ...), last bound +Inf."""
        return cumulative_buckets(self.capture_seconds_counts)


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """The cache's counters and state at one instant (what metrics, admin and benchmarks read).

    The counters are ``CUDAGraphStats``'; cached_graphs and memory_bytes describe the cache now;
    pending_captures are shapes past the threshold waiting for an idle gap; the limits are the
    cache's configuration.
    """

    mode: str
    hits: int
    misses: int
    hit_rate: float
    captures: int
    replays: int
    evictions: int
    eager_runs: int
    capture_failures: int
    capture_seconds_total: float
    capture_seconds_buckets: tuple[tuple[float, int], ...]
    cached_graphs: int
    memory_bytes: int
    pending_captures: int
    max_cached_graphs: int
    memory_budget_bytes: int | None
    capture_threshold: int


def cumulative_buckets(counts: Iterable[int]) -> tuple[tuple[float, int], ...]:
    """Turn per-bucket counts into Prometheus' cumulative form."""
    out: list[tuple[float, int]] = []
    running = 0
    for bound, count in zip(CAPTURE_SECONDS_BUCKETS, counts, strict=True):
        running += count
        out.append((bound, running))
    return tuple(out)
