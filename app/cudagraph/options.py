"""``CUDAGraphOptions``: how graphs are captured and kept (one frozen value per wrapper)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PoolPolicy = Literal["per_graph", "shared"]
POOL_POLICIES: tuple[PoolPolicy, ...] = ("per_graph", "shared")


@dataclass(frozen=True, slots=True)
class CUDAGraphOptions:
    """Capture options.

    warmup_iters: eager runs before each capture (on a side stream on CUDA), so lazy
        initialisation (cuBLAS workspaces, autotuning, allocator growth) happens outside the
        graph.
    debug_check_addresses: on every replay, check the tensor inputs are the captured ones (same
        data pointers) and raise ``InputAddressMismatchError`` naming the descriptor otherwise.
        Costs ~1 us per tensor input; off by default.
    freeze_gc: freeze and disable Python's garbage collector while capturing, so no collection
        (and no finaliser doing CUDA work) runs inside a capture, and a bulk prewarm does not pay
        for repeated full collections.
    weak_ref_output: keep only a non-owning alias of the output (vLLM's ``weak_ref_tensors``).
        The graph's pool then owns the memory; with the shared pool a later capture may reuse it,
        so an output is only valid until the next replay of ANY graph of the wrapper. Off by
        default.
    pool_policy: "per_graph" (default) gives each graph its own memory pool, so evicting a graph
        really returns its memory; "shared" puts all graphs of a wrapper in one pool (smaller
        graphs reuse the largest one's memory), which is cheaper but only returns memory once
        every graph of the wrapper is gone. See docs/cudagraph.md.
    capture_retry_backoff_s / capture_retry_backoff_max_s: after a failed capture the shape runs
        eagerly for base * 2**(failures-1) seconds, capped at the max, before a retry.
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
