"""The graph manager with real ``torch.cuda.CUDAGraph`` (skipped cleanly without CUDA).

The wrappers here pass ``capture_threshold=1`` (capture at first sight): the adaptive default is
``CacheConfig().capture_threshold`` (2).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.cudagraph import (
    Action,
    AdaptiveCUDAGraphWrapper,
    BatchDescriptor,
    CacheConfig,
    CUDAGraphMode,
    CUDAGraphOptions,
    GraphCache,
    InputAddressMismatchError,
    cudagraph_context,
)

pytestmark = pytest.mark.gpu

FULL = CUDAGraphMode.FULL
PIECEWISE = CUDAGraphMode.PIECEWISE
MiB = 2**20


def desc(batch: int) -> BatchDescriptor:
    return BatchDescriptor(num_tokens=batch, num_reqs=batch)


def make_model(hidden: int = 64) -> nn.Module:
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Linear(hidden, 4 * hidden),
            nn.GELU(),
            nn.Linear(4 * hidden, hidden),
            nn.LayerNorm(hidden),
        )
        .cuda()
        .eval()
    )


@pytest.mark.parametrize("pool_policy", ["per_graph", "shared"])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_cuda_graph_output_equals_eager(pool_policy: str, batch: int) -> None:
    model = make_model()
    options = CUDAGraphOptions(pool_policy=pool_policy)  # type: ignore[arg-type]
    wrapper = AdaptiveCUDAGraphWrapper(model, FULL, options, capture_threshold=1)
    static = torch.zeros(batch, 64, device="cuda")  # (B, H) static input
    with torch.inference_mode():
        for _ in range(4):
            fresh = torch.randn(batch, 64, device="cuda")
            static.copy_(fresh)
            with cudagraph_context(FULL, desc(batch)):
                out = wrapper(static)
            torch.testing.assert_close(out, model(fresh), rtol=1e-4, atol=1e-4)
    entry = wrapper.cache.entry_for(desc(batch))
    assert entry is not None
    [piece] = entry.pieces
    assert isinstance(piece.graph, torch.cuda.CUDAGraph)
    assert entry.memory_bytes == piece.memory_bytes > 0
    snap = wrapper.cache.snapshot()
    assert (snap.captures, snap.hits, snap.misses) == (1, 3, 1)


def test_cuda_replay_overwrites_output_and_weak_refs_alias() -> None:
    model = make_model()
    wrapper = AdaptiveCUDAGraphWrapper(
        model, FULL, CUDAGraphOptions(weak_ref_output=True), capture_threshold=1
    )
    static = torch.randn(4, 64, device="cuda")
    with torch.inference_mode(), cudagraph_context(FULL, desc(4)):
        first = wrapper(static)
        fresh = torch.randn(4, 64, device="cuda")
        static.copy_(fresh)
        second = wrapper(static)
        assert second.data_ptr() == first.data_ptr()
        torch.testing.assert_close(first, model(fresh), rtol=1e-4, atol=1e-4)


def test_cuda_piecewise_pieces_equal_eager() -> None:
    # One GraphCache with two pieces (it replaced a wrapper per piece): both pieces are
    # captured in one forward and replayed together.
    torch.manual_seed(0)
    piece1 = nn.Sequential(nn.Linear(64, 64), nn.GELU()).cuda()
    piece2 = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64)).cuda()
    cache = GraphCache(PIECEWISE, CacheConfig(capture_threshold=1), pieces=2)
    buf = torch.zeros(32, 64, device="cuda")  # static buffer of the eager middle op

    static = torch.zeros(16, 64, device="cuda")
    actions = []
    with torch.inference_mode():
        for num_reqs in (1, 2, 4):
            fresh = torch.randn(16, 64, device="cuda")
            static.copy_(fresh)
            with cache.forward(BatchDescriptor(16, num_reqs)) as fwd:
                mid = buf[:16]
                torch.mul(fwd(0, piece1, static), 2.0, out=mid)  # eager between the pieces
                out = fwd(1, piece2, mid).clone()
            actions.append(fwd.action)
            torch.testing.assert_close(out, piece2(piece1(fresh) * 2.0), rtol=1e-4, atol=1e-4)
    assert actions == [Action.CAPTURE, Action.REPLAY, Action.REPLAY]
    snap = cache.snapshot()
    assert (snap.hits, snap.misses, snap.captures) == (2, 1, 1)
    entry = cache.entry_for(BatchDescriptor(16))
    assert entry is not None and len(entry.pieces) == 2
    assert all(isinstance(p.graph, torch.cuda.CUDAGraph) for p in entry.pieces)
    assert entry.memory_bytes == sum(p.memory_bytes for p in entry.pieces) == snap.memory_bytes


def test_cuda_debug_address_check_catches_a_reallocated_input() -> None:
    model = make_model()
    wrapper = AdaptiveCUDAGraphWrapper(
        model, FULL, CUDAGraphOptions(debug_check_addresses=True), capture_threshold=1
    )
    static = torch.randn(4, 64, device="cuda")
    with torch.inference_mode(), cudagraph_context(FULL, desc(4)):
        wrapper(static)
        wrapper(static)
        with pytest.raises(InputAddressMismatchError, match=r"num_tokens=4, num_reqs=4"):
            wrapper(static.clone())


def _big_model() -> nn.Module:
    torch.manual_seed(0)
    # (1024, 8192) float32 intermediates: 32 MiB each, held by the graph's pool.
    return nn.Sequential(nn.Linear(1024, 8192), nn.GELU(), nn.Linear(8192, 1024)).cuda().eval()


def _settle_capture_stream(model: nn.Module) -> None:
    """Capture and drop a throwaway graph before a memory baseline is read.

    The first matmul on the (process-wide) capture stream allocates that stream's cuBLAS
    workspace through the caching allocator and keeps it for good (32 MiB on Hopper); without
    this, a test run on its own would count it as graph memory that eviction fails to return.
    """
    warm = AdaptiveCUDAGraphWrapper(model, FULL, capture_threshold=1)
    with cudagraph_context(FULL, desc(8)):
        warm(torch.randn(8, 1024, device="cuda"))
    assert warm.cache.clear() == 1


def test_cuda_memory_returns_after_eviction_per_graph_pool() -> None:
    model = _big_model()
    big = torch.randn(1024, 1024, device="cuda")
    small = torch.randn(8, 1024, device="cuda")
    wrapper = AdaptiveCUDAGraphWrapper(
        model, FULL, max_cached_graphs=1, young_lookups=0, capture_threshold=1
    )
    with torch.inference_mode():
        _settle_capture_stream(model)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_reserved()
        with cudagraph_context(FULL, desc(1024)):
            wrapper(big)  # output not kept: only the graph holds its pool
        [entry] = wrapper.cache.cached_entries()
        held = torch.cuda.memory_reserved()
        assert entry.memory_bytes >= 32 * MiB
        assert held - base >= 32 * MiB
        with cudagraph_context(FULL, desc(8)):
            wrapper(small)  # captures the small graph, evicting the big one
        assert wrapper.cache.snapshot().evictions == 1
        torch.cuda.synchronize()
        after = torch.cuda.memory_reserved()
    assert after - base <= 16 * MiB, (base, held, after)
    assert held - after >= 32 * MiB


@pytest.mark.parametrize("pool_policy", ["per_graph", "shared"])
def test_cuda_memory_returns_after_clear(pool_policy: str) -> None:
    model = _big_model()
    inputs = {b: torch.randn(b, 1024, device="cuda") for b in (1024, 512)}
    wrapper = AdaptiveCUDAGraphWrapper(
        model,
        FULL,
        CUDAGraphOptions(pool_policy=pool_policy),  # type: ignore[arg-type]
    )
    with torch.inference_mode():
        _settle_capture_stream(model)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_reserved()
        report = wrapper.prewarm([desc(512), desc(1024)], lambda d: ((inputs[d.num_tokens],), {}))
        assert report.captured == [desc(1024), desc(512)]  # largest first
        held = torch.cuda.memory_reserved()
        if pool_policy == "shared":
            # the smaller graph reuses the larger one's pool: it costs (almost) nothing extra
            small = {e.descriptor: e.memory_bytes for e in wrapper.cache.cached_entries()}[
                desc(512)
            ]
            assert small < 16 * MiB
        assert wrapper.cache.clear() == 2
        torch.cuda.synchronize()
        after = torch.cuda.memory_reserved()
    assert held - base >= 32 * MiB
    assert after - base <= 8 * MiB, (base, held, after)


class HostSync(nn.Module):
    """Calls .item() (a host sync), which cannot be captured."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        if y.abs().max().item() > 1e30:
            y = y * 0.0
        return y


def test_cuda_failed_capture_falls_back_to_eager_and_leaves_cuda_usable() -> None:
    model = HostSync().cuda()
    wrapper = AdaptiveCUDAGraphWrapper(model, FULL, capture_threshold=1)
    x = torch.randn(4, 64, device="cuda")
    with torch.inference_mode():
        with cudagraph_context(FULL, desc(4)):
            out = wrapper(x)
        torch.testing.assert_close(out, model(x))
        snap = wrapper.cache.snapshot()
        assert (snap.capture_failures, snap.captures, snap.eager_runs) == (1, 0, 1)
        assert "capture failed" in (wrapper.cache.capture_failure_reason(desc(4)) or "")
        # the process can still capture and replay other graphs correctly
        healthy = make_model()
        other = AdaptiveCUDAGraphWrapper(healthy, FULL, capture_threshold=1)
        static = torch.randn(4, 64, device="cuda")
        with cudagraph_context(FULL, desc(4)):
            other(static)
            fresh = torch.randn(4, 64, device="cuda")
            static.copy_(fresh)
            torch.testing.assert_close(other(static), healthy(fresh), rtol=1e-4, atol=1e-4)
        snap = other.cache.snapshot()
        assert (snap.captures, snap.hits, snap.capture_failures) == (1, 1, 0)
