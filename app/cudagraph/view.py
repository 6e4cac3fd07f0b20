"""The read-only "graph cache view" the service reads (metrics, admin API), and its records.

``AdaptiveCUDAGraphWrapper`` and ``CUDAGraphGroup`` implement ``GraphCacheView``. Every method is
safe to call from another thread while the worker thread runs the model: views take only the
wrappers' short state locks, never the graph lock, and never touch tensors or CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Protocol, runtime_checkable

from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.modes import CUDAGraphMode


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


@runtime_checkable
class GraphCacheView(Protocol):
    """What the service may read and do. See /work/contracts.md, section A."""

    @property
    def mode(self) -> CUDAGraphMode: ...

    @property
    def max_cached_graphs(self) -> int: ...

    @property
    def memory_budget_bytes(self) -> int | None: ...

    @property
    def capture_threshold(self) -> int: ...

    def stats_snapshot(self) -> dict[str, Any]: ...

    def cached_entries(self) -> list[CachedGraphInfo]: ...

    def get_hot_shapes(self, top_k: int) -> list[HotShape]: ...

    def predict_shapes(self, top_k: int) -> list[BatchDescriptor]: ...

    def get_cached_descriptors(self) -> list[BatchDescriptor]: ...

    def memory_bytes(self) -> int: ...

    def clear(self) -> int: ...

    def export_profile(self) -> dict[str, Any]: ...

    def import_profile(self, profile: dict[str, Any]) -> int: ...

    def save_profile(self, path: str | PathLike[str]) -> None: ...

    def load_profile(self, path: str | PathLike[str]) -> int: ...
