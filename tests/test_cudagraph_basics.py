"""Value types of the graph manager: modes, descriptors, ladders, options, context, mock graph."""

from __future__ import annotations

import threading

import pytest
import torch

from app.cudagraph import (
    CAPTURE_SECONDS_BUCKETS,
    BatchDescriptor,
    CUDAGraphMode,
    CUDAGraphOptions,
    CUDAGraphStats,
    GraphCache,
    MockCUDAGraph,
    SizeAboveLadderError,
    cudagraph_context,
    default_ladder,
    get_cudagraph_sizes,
    get_forward_context,
    mock_graph_pool_handle,
    pad_to_size,
)
from app.cudagraph.backoff import CaptureBackoff

# ---------------------------------------------------------------- modes


def test_modes_values_and_predicates() -> None:
    assert [int(m) for m in CUDAGraphMode] == [0, 1, 2]
    assert not CUDAGraphMode.NONE.has_graphs()
    assert CUDAGraphMode.PIECEWISE.has_graphs()
    assert CUDAGraphMode.FULL.has_graphs()
    assert CUDAGraphMode.FULL.has_full_cudagraphs()
    assert not CUDAGraphMode.PIECEWISE.has_full_cudagraphs()
    assert not CUDAGraphMode.NONE.has_full_cudagraphs()


# ---------------------------------------------------------------- descriptors


def test_descriptor_is_a_frozen_hashable_key() -> None:
    a = BatchDescriptor(128, 4)
    assert a == BatchDescriptor(num_tokens=128, num_reqs=4, is_uniform_decode=False)
    assert hash(a) == hash(BatchDescriptor(128, 4))
    assert a != BatchDescriptor(128, 2)
    assert {a: "x"}[BatchDescriptor(128, 4)] == "x"
    with pytest.raises(AttributeError):
        a.num_tokens = 3  # type: ignore[misc]


def test_relaxed_keeps_only_the_token_count() -> None:
    full = BatchDescriptor(64, 8, is_uniform_decode=True)
    assert full.relaxed() == BatchDescriptor(64)
    assert full.relaxed().num_reqs is None
    assert full.relaxed().is_uniform_decode is False
    assert BatchDescriptor(64, 2).relaxed() == BatchDescriptor(64, 8).relaxed()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_tokens": 0}, "num_tokens must be >= 1"),
        ({"num_tokens": -3}, "num_tokens must be >= 1"),
        ({"num_tokens": 4, "num_reqs": 0}, "num_reqs must be >= 1"),
        ({"num_tokens": 4, "num_reqs": 5}, r"num_reqs \(5\) cannot exceed num_tokens \(4\)"),
        ({"num_tokens": 2.5}, "num_tokens must be an int"),
        ({"num_tokens": True}, "num_tokens must be an int"),
        ({"num_tokens": 4, "num_reqs": "2"}, "num_reqs must be an int"),
        ({"num_tokens": 4, "is_uniform_decode": 1}, "is_uniform_decode must be a bool"),
    ],
)
def test_bad_descriptors_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchDescriptor(**kwargs)


def test_descriptor_dict_round_trip_and_label() -> None:
    d = BatchDescriptor(32, 4, True)
    assert BatchDescriptor.from_dict(d.to_dict()) == d
    assert d.label() == "t32_r4_u"
    assert BatchDescriptor(512).label() == "t512"
    with pytest.raises(ValueError, match="unknown descriptor fields"):
        BatchDescriptor.from_dict({"num_tokens": 4, "batch": 2})
    with pytest.raises(ValueError, match="missing num_tokens"):
        BatchDescriptor.from_dict({"num_reqs": 2})


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("capture_sizes", "max_reqs", "max_tokens", "mode", "expected"),
    [
        (None, 8, 64, CUDAGraphMode.NONE, []),
        ([1, 2, 4], 8, 64, CUDAGraphMode.NONE, []),
        (None, 8, 64, CUDAGraphMode.FULL, [1, 2, 4, 8]),
        (None, 20, 64, CUDAGraphMode.FULL, [1, 2, 4, 8, 16, 20]),
        (None, 8, 20, CUDAGraphMode.PIECEWISE, [1, 2, 4, 8, 16, 20]),
        ([4, 1, 4, 2, 64], 8, 64, CUDAGraphMode.FULL, [1, 2, 4]),
        ([4, 1, 4, 2, 64], 8, 64, CUDAGraphMode.PIECEWISE, [1, 2, 4, 64]),
        ([3], 8, 64, CUDAGraphMode.FULL, [3]),
    ],
)
def test_capture_sizes_table(
    capture_sizes: list[int] | None,
    max_reqs: int,
    max_tokens: int,
    mode: CUDAGraphMode,
    expected: list[int],
) -> None:
    assert get_cudagraph_sizes(capture_sizes, max_reqs, max_tokens, mode) == expected


@pytest.mark.parametrize("limit", [1, 3, 7, 8, 100, 256, 300, 512, 1000, 8192])
def test_default_ladder_shape(limit: int) -> None:
    ladder = default_ladder(limit)
    assert ladder == sorted(set(ladder))
    assert ladder[-1] == limit  # the largest batch never falls off the ladder
    if limit >= 4:
        assert ladder[:3] == [1, 2, 4]
    assert all(s <= limit for s in ladder)
    # vLLM-like: steps of 8 up to 256, and never more than 12.5% waste above 8 tokens
    assert [s for s in ladder if 8 <= s <= min(256, limit) and s != limit] == list(
        range(8, min(256, limit - 1) + 1, 8)
    )
    for lower, upper in zip(ladder, ladder[1:], strict=False):
        if lower >= 64 and upper != limit:
            assert (upper - lower) / lower <= 0.125 + 1e-9


def test_default_ladder_for_many_tokens_is_coarse() -> None:
    ladder = default_ladder(8192)
    assert len(ladder) < 90
    assert {1024, 2048, 4096, 8192} <= set(ladder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([0, 2], 8, 64, CUDAGraphMode.FULL), "every capture size must be an int >= 1"),
        (([2.0], 8, 64, CUDAGraphMode.FULL), "every capture size must be an int >= 1"),
        ((None, 0, 64, CUDAGraphMode.FULL), "max_num_reqs must be an int >= 1"),
        ((None, 8, -1, CUDAGraphMode.PIECEWISE), "max_num_tokens must be an int >= 1"),
        (([16, 32], 8, 64, CUDAGraphMode.FULL), "none of the capture sizes"),
        (("124", 8, 64, CUDAGraphMode.FULL), "got a string"),
    ],
)
def test_bad_sizes_raise_clear_errors(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_cudagraph_sizes(*args)


@pytest.mark.parametrize(
    ("count", "sizes", "expected"),
    [(1, [1, 2, 4], 1), (3, [1, 2, 4], 4), (4, [1, 2, 4], 4), (9, [8, 16, 24], 16), (5, [8], 8)],
)
def test_pad_to_size(count: int, sizes: list[int], expected: int) -> None:
    assert pad_to_size(count, sizes) == expected


def test_pad_above_ladder_and_bad_ladders() -> None:
    with pytest.raises(SizeAboveLadderError, match="count 9 is above the largest capture size 8"):
        pad_to_size(9, [1, 2, 4, 8])
    assert issubclass(SizeAboveLadderError, ValueError)
    with pytest.raises(ValueError, match="empty ladder"):
        pad_to_size(1, [])
    with pytest.raises(ValueError, match="strictly ascending"):
        pad_to_size(1, [4, 2])
    with pytest.raises(ValueError, match="count must be an int >= 1"):
        pad_to_size(0, [1, 2])


# ---------------------------------------------------------------- options, stats, back-off


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_iters": -1}, "warmup_iters must be >= 0"),
        ({"pool_policy": "global"}, "pool_policy must be one of"),
        ({"capture_retry_backoff_s": 0}, "capture_retry_backoff_s must be > 0"),
        (
            {"capture_retry_backoff_s": 5, "capture_retry_backoff_max_s": 1},
            "capture_retry_backoff_max_s must be >=",
        ),
    ],
)
def test_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CUDAGraphOptions(**kwargs)


def test_stats_hit_rate_and_histogram() -> None:
    stats = CUDAGraphStats()
    assert stats.hit_rate() == 0.0
    stats.hits, stats.misses = 3, 1
    assert stats.hit_rate() == 0.75
    for seconds in (0.0005, 0.001, 0.02, 7.0, 100.0):
        stats.record_capture_seconds(seconds)
    buckets = stats.cumulative_buckets()
    assert [b for b, _ in buckets] == list(CAPTURE_SECONDS_BUCKETS)
    assert buckets[-1] == (float("inf"), 5)
    as_dict = dict((b, c) for b, c in buckets)
    assert as_dict[0.001] == 2  # le is inclusive
    assert as_dict[0.025] == 3
    assert as_dict[10.0] == 4
    assert stats.capture_seconds_total == pytest.approx(107.0215)


def test_backoff_is_exponential_and_capped() -> None:
    backoff = CaptureBackoff(base_s=1.0, max_s=5.0)
    key = BatchDescriptor(8)
    delays = [backoff.record_failure(key, "boom", now=100.0) for _ in range(5)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.blocked(key, now=104.9)
    assert not backoff.blocked(key, now=105.0)
    assert backoff.blocked_keys(now=101.0) == {key}
    backoff.forget(key)
    assert not backoff.blocked(key, now=100.0)


# ---------------------------------------------------------------- context


def test_context_nests_and_restores() -> None:
    assert get_forward_context() is None
    outer, inner = BatchDescriptor(16, 2), BatchDescriptor(32)
    with cudagraph_context(CUDAGraphMode.FULL, outer) as ctx:
        assert ctx.mode is CUDAGraphMode.FULL and ctx.descriptor == outer
        with cudagraph_context(CUDAGraphMode.PIECEWISE, inner):
            current = get_forward_context()
            assert current is not None and current.mode is CUDAGraphMode.PIECEWISE
            assert current.descriptor == inner
        current = get_forward_context()
        assert current is not None and current.descriptor == outer
    assert get_forward_context() is None


def test_context_is_per_thread() -> None:
    seen: list[object] = []
    with cudagraph_context(CUDAGraphMode.FULL, BatchDescriptor(4, 4)):
        thread = threading.Thread(target=lambda: seen.append(get_forward_context()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_context_validates_its_arguments() -> None:
    with (
        pytest.raises(ValueError, match="needs a BatchDescriptor"),
        cudagraph_context(CUDAGraphMode.FULL, None),
    ):
        pass
    with (
        pytest.raises(TypeError, match="must be a BatchDescriptor"),
        cudagraph_context(
            CUDAGraphMode.FULL,
            (4, 4),  # type: ignore[arg-type]
        ),
    ):
        pass
    with pytest.raises(ValueError), cudagraph_context(7, BatchDescriptor(4)):
        pass
    with cudagraph_context(CUDAGraphMode.NONE, None) as ctx:
        assert ctx.descriptor is None and ctx.mode is CUDAGraphMode.NONE
    # prewarm is no longer a kind of forward: it goes through GraphCache.prewarm
    with (
        pytest.raises(TypeError, match="prewarm"),
        cudagraph_context(CUDAGraphMode.FULL, BatchDescriptor(4), prewarm=True),  # type: ignore[call-arg]
    ):
        pass


def test_the_cache_key_relaxes_piecewise_descriptors_only() -> None:
    # What ForwardContext.relaxed used to precompute is now the cache's key_for().
    descriptor = BatchDescriptor(16, 2, is_uniform_decode=True)
    assert GraphCache(CUDAGraphMode.PIECEWISE).key_for(descriptor) == BatchDescriptor(16)
    assert GraphCache(CUDAGraphMode.FULL).key_for(descriptor) == descriptor
    assert GraphCache(CUDAGraphMode.NONE).key_for(descriptor) == descriptor


# ---------------------------------------------------------------- mock graph


def test_mock_graph_replays_into_the_same_output_storage() -> None:
    static_in = torch.ones(3)
    graph = MockCUDAGraph()
    graph.capture_begin()
    out = static_in * 2  # (3,)
    graph.record(lambda: static_in * 2, out)
    graph.capture_end()
    kept = out  # a caller that forgets to copy
    static_in.fill_(5.0)
    graph.replay()
    assert kept.tolist() == [10.0, 10.0, 10.0]
    assert kept.data_ptr() == out.data_ptr()


def test_mock_graph_state_machine_and_pools() -> None:
    graph = MockCUDAGraph()
    with pytest.raises(RuntimeError, match="replay of a mock graph that is empty"):
        graph.replay()
    with pytest.raises(RuntimeError, match="never captured"):
        graph.pool()
    shared = mock_graph_pool_handle()
    graph.capture_begin(shared)
    with pytest.raises(RuntimeError, match="capture_begin on a mock graph that is capturing"):
        graph.capture_begin()
    with pytest.raises(RuntimeError, match="without record"):
        graph.capture_end()
    graph.capture_begin(shared)
    graph.record(lambda: (torch.zeros(2), [torch.ones(1)]), (torch.zeros(2), [torch.ones(1)]))
    graph.capture_end()
    assert graph.pool() == shared
    assert isinstance(shared, tuple) and len(shared) == 2
    graph.replay()
    graph.reset()
    with pytest.raises(RuntimeError):
        graph.replay()
    other = MockCUDAGraph()
    other.capture_begin()
    assert other.pool() != shared
