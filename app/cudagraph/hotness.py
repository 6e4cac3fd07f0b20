"""Per-shape demand: how often each descriptor is asked for, and how recently.

Two numbers per shape: ``count``, raw lookups (the hot-shape order and the profile), and
``score``, the eviction value: each lookup adds 1 and the score halves every ``half_life``
lookups of the cache (time in lookups, so it follows traffic and tests are deterministic).
A shape asked for 100 times long ago thus ranks below one asked for 10 times just now.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from app.cudagraph.descriptor import BatchDescriptor


@dataclass(slots=True)
class ShapeDemand:
    count: int
    score: float
    last_lookup: int


class ShapeTracker:
    """Not locked by itself: the owning cache calls it under its state lock.

    Bounded: beyond ``max_shapes`` tracked shapes, the lowest-scoring one that has no cached
    graph is forgotten (shapes come from a ladder, so this only guards against misuse).
    """

    def __init__(self, half_life: int, max_shapes: int) -> None:
        if half_life < 1:
            raise ValueError(f"half_life_lookups must be >= 1, got {half_life}")
        if max_shapes < 1:
            raise ValueError(f"max_tracked_shapes must be >= 1, got {max_shapes}")
        self._decay = 0.5 ** (1.0 / half_life)
        self._max_shapes = max_shapes
        self._shapes: dict[BatchDescriptor, ShapeDemand] = {}

    def observe(self, key: BatchDescriptor, lookup: int, keep: Container[BatchDescriptor]) -> None:
        """One lookup of ``key`` at lookup number ``lookup``; ``keep`` are never forgotten."""
        demand = self._shapes.get(key)
        if demand is None:
            self._shapes[key] = ShapeDemand(1, 1.0, lookup)
            self._prune(keep, key, lookup)
            return
        demand.count += 1
        demand.score = demand.score * self._decay ** (lookup - demand.last_lookup) + 1.0
        demand.last_lookup = lookup

    def count(self, key: BatchDescriptor) -> int:
        demand = self._shapes.get(key)
        return demand.count if demand is not None else 0

    def score(self, key: BatchDescriptor, lookup: int) -> float:
        """The decayed frequency of ``key`` as of lookup number ``lookup``."""
        demand = self._shapes.get(key)
        if demand is None:
            return 0.0
        return demand.score * self._decay ** (lookup - demand.last_lookup)

    def hottest(self) -> list[tuple[BatchDescriptor, int]]:
        """(descriptor, count), most requested first; ties: most recently requested first."""
        ranked = sorted(self._shapes.items(), key=lambda kv: (-kv[1].count, -kv[1].last_lookup))
        return [(key, demand.count) for key, demand in ranked]

    def restore(
        self, key: BatchDescriptor, count: int, lookup: int, keep: Container[BatchDescriptor]
    ) -> None:
        """Import a remembered count: the larger of the known and the imported count wins, and
        the shape counts as seen now (its score starts at the count and decays from here)."""
        demand = self._shapes.get(key)
        if demand is None:
            self._shapes[key] = ShapeDemand(count, float(count), lookup)
            self._prune(keep, key, lookup)
            return
        demand.count = max(demand.count, count)
        demand.score = max(self.score(key, lookup), float(count))
        demand.last_lookup = lookup

    def _prune(self, keep: Container[BatchDescriptor], new: BatchDescriptor, lookup: int) -> None:
        while len(self._shapes) > self._max_shapes:
            candidates = [key for key in self._shapes if key != new and key not in keep]
            if not candidates:
                return
            victim = min(candidates, key=lambda key: self.score(key, lookup))
            del self._shapes[victim]
