"""How graphs are captured (``CUDAGraphOptions``) and how the cache keeps them (``CacheConfig``).

Both are frozen values and the one source of their defaults: the service's settings take their
defaults from these classes, and the wrappers' keyword defaults do too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PoolPolicy = Literal["per_graph", "shared"]
POOL_POLICIES: tuple[PoolPolicy, ...] = ("per_graph", "shared")
Eviction = Literal["lru", "hotness"]


def check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CUDAGraphOptions:
    """Capture options.

    warmup_iters: eager runs before each capture (on a side stream on CUDA): lazy initialisation
        happens outside the graph.
    debug_check_addresses: on every replay, check the tensor inputs are the captured ones and
        raise ``InputAddressMismatchError`` naming the descriptor otherwise.
    freeze_gc: no garbage collection (and no finaliser doing CUDA work) inside a capture.
    weak_ref_output: keep only a non-owning alias of the output (vLLM's ``weak_ref_tensors``);
        with the shared pool it is then valid only until the next replay of ANY graph.
    pool_policy: "per_graph" (evicting a graph returns its memory) or "shared" (smaller graphs
        reuse the largest one's memory, returned only once every graph is gone).
    capture_retry_backoff_s / _max_s: after a failed capture the shape runs eagerly for
        base * 2**(failures-1) seconds, capped, before a retry.
    """

    warmup_iters: int = 1
    debug_check_addresses: bool = False
    freeze_gc: bool = True
    weak_ref_output: bool = False
    pool_policy: PoolPolicy = "per_graph"
    capture_retry_backoff_s: float = 5.0
    capture_retry_backoff_max_s: float = 300.0

    def __post_init__(self) -> None:
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int):
            raise ValueError(f"warmup_iters must be an int, got {self.warmup_iters!r}")
        if self.warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {self.warmup_iters}")
        if self.pool_policy not in POOL_POLICIES:
            raise ValueError(
                f"pool_policy must be one of {list(POOL_POLICIES)}, got {self.pool_policy!r}"
            )
        if not self.capture_retry_backoff_s > 0:
            raise ValueError(
                f"capture_retry_backoff_s must be > 0, got {self.capture_retry_backoff_s}"
            )
        if self.capture_retry_backoff_max_s < self.capture_retry_backoff_s:
            raise ValueError(
                "capture_retry_backoff_max_s must be >= capture_retry_backoff_s, got "
                f"{self.capture_retry_backoff_max_s} < {self.capture_retry_backoff_s}"
            )


@dataclass(frozen=True)
class CacheConfig:
    """What the ``GraphCache`` keeps, when it captures and what it evicts.

    max_cached_graphs: graphs (logical descriptors) kept at most; 0 keeps none (all eager).
    memory_budget_bytes: optional cap on the summed memory of the cached graphs.
    capture_threshold: lookups of a shape before it is captured (1 = first sight).
    min_replays_to_keep / young_lookups: a graph captured fewer than ``young_lookups`` lookups
        ago with fewer than ``min_replays_to_keep`` replays is spared by eviction while any
        other candidate exists.
    half_life_lookups: lookups after which a shape's eviction score has halved.
    max_tracked_shapes: bound on the per-shape demand table.
    eviction: "hotness" (lowest decayed score first, ties least recently used) or "lru".
    max_capture_delay_s: a deferred capture waits for an idle gap at most this long; past it,
        it runs between two batches even under load.
    idle_prewarm_top_k: predicted shapes the cache may capture in idle gaps, only while it has
        room for them without evicting anything (0: none).
    """

    max_cached_graphs: int = 64
    memory_budget_bytes: int | None = None
    capture_threshold: int = 2
    min_replays_to_keep: int = 2
    young_lookups: int = 256
    half_life_lookups: int = 1000
    max_tracked_shapes: int = 1024
    eviction: Eviction = "hotness"
    max_capture_delay_s: float = 1.0
    idle_prewarm_top_k: int = 4

    def __post_init__(self) -> None:
        check_int("max_cached_graphs", self.max_cached_graphs, 0)
        if self.memory_budget_bytes is not None:
            check_int("memory_budget_bytes", self.memory_budget_bytes, 1)
        check_int("capture_threshold", self.capture_threshold, 1)
        check_int("min_replays_to_keep", self.min_replays_to_keep, 0)
        check_int("young_lookups", self.young_lookups, 0)
        check_int("half_life_lookups", self.half_life_lookups, 1)
        check_int("max_tracked_shapes", self.max_tracked_shapes, 1)
        check_int("idle_prewarm_top_k", self.idle_prewarm_top_k, 0)
        if self.eviction not in ("lru", "hotness"):
            raise ValueError(f"eviction must be 'lru' or 'hotness', got {self.eviction!r}")
        if not self.max_capture_delay_s >= 0:
            raise ValueError(f"max_capture_delay_s must be >= 0, got {self.max_capture_delay_s}")
