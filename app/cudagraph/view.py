"""The records the graph cache's readers get (admin API, metrics, benchmarks, the engine's log).

Plain frozen values: built under the cache's short state lock, never holding tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from app.cudagraph.descriptor import BatchDescriptor


@dataclass(frozen=True, slots=True)
class CachedGraphInfo:
    """One cached graph as the admin API shows it. last_used: ``time.time()`` epoch seconds."""

    descriptor: BatchDescriptor
    replay_count: int
    capture_seconds: float
    memory_bytes: int
    last_used: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "descriptor": self.descriptor.to_dict(),
            "replay_count": self.replay_count,
            "capture_seconds": self.capture_seconds,
            "memory_bytes": self.memory_bytes,
            "last_used": self.last_used,
        }


@dataclass(frozen=True, slots=True)
class HotShape:
    """A requested shape: how often it was asked for, and whether a graph is cached for it."""

    descriptor: BatchDescriptor
    count: int
    captured: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "descriptor": self.descriptor.to_dict(),
            "count": self.count,
            "captured": self.captured,
        }


@dataclass(slots=True)
class PrewarmReport:
    """Outcome of a prewarm: captured (in capture order, largest first), skipped (already
    cached, or no room left under max_cached_graphs), failed (descriptor, reason), wall seconds.
    """

    captured: list[BatchDescriptor] = field(default_factory=list)
    skipped: list[BatchDescriptor] = field(default_factory=list)
    failed: list[tuple[BatchDescriptor, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "captured": [d.to_dict() for d in self.captured],
            "skipped": [d.to_dict() for d in self.skipped],
            "failed": [{"descriptor": d.to_dict(), "reason": r} for d, r in self.failed],
            "seconds": self.seconds,
        }


Outcome = Literal["captured", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class PrewarmProgress:
    """One step of a prewarm, for a progress log: the ``index``-th of ``total`` descriptors."""

    index: int
    total: int
    descriptor: BatchDescriptor
    outcome: Outcome
    seconds: float
    reason: str | None = None
