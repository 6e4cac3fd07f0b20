"""CUDAGraphWrapper on the CPU (mock graphs) with a real small torch module."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from app.cudagraph import (
    AdaptiveCUDAGraphWrapper,
    BatchDescriptor,
    CacheConfig,
    CacheEntry,
    CacheSnapshot,
    CUDAGraphMode,
    CUDAGraphOptions,
    CUDAGraphWrapper,
    InputAddressMismatchError,
    MockCUDAGraph,
    PieceGraph,
    PrewarmProgress,
    cudagraph_context,
    graph_lock,
    is_capturing,
)

H = 16  # hidden size of the test model
FULL = CUDAGraphMode.FULL
PIECEWISE = CUDAGraphMode.PIECEWISE


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(H, 32), nn.GELU(), nn.Linear(32, H), nn.LayerNorm(H)).eval()


def desc(batch: int) -> BatchDescriptor:
    return BatchDescriptor(num_tokens=batch, num_reqs=batch)


def call(wrapper: object, descriptor: BatchDescriptor, x: torch.Tensor, mode=FULL) -> torch.Tensor:
    with cudagraph_context(mode, descriptor):
        return wrapper(x)  # type: ignore[operator]


class CaptureCounter(nn.Module):
    """The test model, counting how often it runs and how often inside a capture; it raises
    inside a capture while ``fail_capture`` is set, like a host sync (``.item()``) would on CUDA.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inner = make_model()
        self.calls = 0
        self.capture_attempts = 0
        self.fail_capture = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if is_capturing():
            self.capture_attempts += 1
            if self.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")
        return self.inner(x)


# ---------------------------------------------------------------- replay semantics


@pytest.mark.parametrize("wrapper_cls", [CUDAGraphWrapper, AdaptiveCUDAGraphWrapper])
@pytest.mark.parametrize("pool_policy", ["per_graph", "shared"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_replay_equals_eager_for_new_data_in_static_inputs(
    wrapper_cls: type[CUDAGraphWrapper], pool_policy: str, batch: int
) -> None:
    model = make_model()
    # Both capture at first sight here (the adaptive one's default threshold is 2).
    extra = {"capture_threshold": 1} if wrapper_cls is AdaptiveCUDAGraphWrapper else {}
    wrapper = wrapper_cls(model, FULL, CUDAGraphOptions(pool_policy=pool_policy), **extra)  # type: ignore[arg-type]
    static = torch.zeros(batch, H)  # (B, H) static input buffer
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for _ in range(4):
            fresh = torch.randn(batch, H, generator=gen)
            static.copy_(fresh)
            out = call(wrapper, desc(batch), static)
            torch.testing.assert_close(out, model(fresh))
    stats = wrapper.cache.snapshot()
    assert (stats.captures, stats.misses, stats.hits, stats.replays) == (1, 1, 3, 3)


def test_replay_overwrites_the_previous_output() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL)
    static = torch.randn(4, H)
    first = call(wrapper, desc(4), static)
    first_copy = first.clone()
    second_input = torch.randn(4, H)
    static.copy_(second_input)
    second = call(wrapper, desc(4), static)
    # The same tensor object, graph memory: a caller that kept `first` without copying now
    # holds the second batch's answer, exactly as with a real CUDA graph.
    assert second is first
    torch.testing.assert_close(first, model(second_input))
    assert not torch.allclose(first, first_copy)


def test_new_tensors_instead_of_static_inputs_give_stale_results() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL)
    static = torch.randn(2, H)
    call(wrapper, desc(2), static)
    other = torch.randn(2, H)
    out = call(wrapper, desc(2), other)  # wrong protocol: the graph still reads `static`
    torch.testing.assert_close(out, model(static))
    assert not torch.allclose(out, model(other))


def test_debug_address_check_names_the_descriptor() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL, CUDAGraphOptions(debug_check_addresses=True))
    static = torch.randn(2, H)
    call(wrapper, desc(2), static)
    out = call(wrapper, desc(2), static[:])  # a view of the same memory is fine
    answered = out.clone()
    static.copy_(torch.randn(2, H))
    with pytest.raises(InputAddressMismatchError, match=r"num_tokens=2, num_reqs=2") as info:
        call(wrapper, desc(2), static.clone())
    assert info.value.descriptor == desc(2)
    # Refused before the replay: the graph output still holds the previous answer.
    torch.testing.assert_close(out, answered)
    # The cache decides a forward (one lookup) before its pieces run, so the refused forward
    # was counted as a hit; the old per-call wrapper checked the inputs before counting.
    snap = wrapper.cache.snapshot()
    assert (snap.hits, snap.misses) == (2, 1)
    out = call(wrapper, desc(2), static)  # the right buffer still replays, with the new data
    torch.testing.assert_close(out, model(static))


def test_weak_ref_output_aliases_graph_memory() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL, CUDAGraphOptions(weak_ref_output=True))
    static = torch.randn(3, H)
    out = call(wrapper, desc(3), static)
    torch.testing.assert_close(out, model(static))
    new_input = torch.randn(3, H)
    static.copy_(new_input)
    again = call(wrapper, desc(3), static)
    assert again.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, model(new_input))


def test_tuple_and_dict_outputs_are_replayed() -> None:
    lin = make_model()

    def two_heads(x: torch.Tensor) -> dict[str, object]:
        y = lin(x)
        return {"y": y, "extra": (y.sum(dim=-1), [y * 2])}

    wrapper = CUDAGraphWrapper(two_heads, FULL)
    static = torch.randn(2, H)
    with cudagraph_context(FULL, desc(2)):
        first = wrapper(static)
        fresh = torch.randn(2, H)
        static.copy_(fresh)
        out = wrapper(static)
    assert out is first
    torch.testing.assert_close(out["y"], lin(fresh))
    torch.testing.assert_close(out["extra"][1][0], lin(fresh) * 2)


# ---------------------------------------------------------------- when the wrapper acts


def test_eager_outside_any_context_and_in_other_modes() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL)
    x = torch.randn(2, H)
    a, b = wrapper(x), wrapper(x)
    assert a is not b  # fresh eager outputs, no graph memory
    torch.testing.assert_close(a, model(x))
    with cudagraph_context(PIECEWISE, desc(2)):
        wrapper(x)
    with cudagraph_context(CUDAGraphMode.NONE, None):
        wrapper(x)
    assert wrapper.cache.snapshot().misses == 0
    assert wrapper.get_cached_descriptors() == []


def test_mode_none_wrapper_is_a_pass_through_with_an_empty_view() -> None:
    model = make_model()
    wrapper = AdaptiveCUDAGraphWrapper(model, CUDAGraphMode.NONE)
    x = torch.randn(2, H)
    with cudagraph_context(CUDAGraphMode.NONE, desc(2)):
        torch.testing.assert_close(wrapper(x), model(x))
    snap = wrapper.cache.snapshot()
    assert snap.hits == snap.misses == snap.cached_graphs == 0
    assert wrapper.prewarm([desc(2)], lambda d: ((x,), {})).skipped == [desc(2)]


@pytest.mark.parametrize("wrapper_cls", [CUDAGraphWrapper, AdaptiveCUDAGraphWrapper])
def test_prewarm_takes_shapes_and_dummy_fn_by_keyword(wrapper_cls: type[CUDAGraphWrapper]) -> None:
    model = make_model()
    wrapper = wrapper_cls(model, FULL)
    statics = {b: torch.zeros(b, H) for b in (2, 4)}
    progress: list[PrewarmProgress] = []

    def dummy_fn(d: BatchDescriptor) -> tuple[tuple, dict]:
        return (statics[d.num_tokens],), {}

    report = wrapper.prewarm(
        shapes=[desc(2), desc(4)], dummy_fn=dummy_fn, on_progress=progress.append
    )
    assert report.captured == [desc(4), desc(2)]  # largest first
    assert [(p.index, p.total, p.descriptor, p.outcome) for p in progress] == [
        (1, 2, desc(4), "captured"),
        (2, 2, desc(2), "captured"),
    ]
    assert wrapper.prewarm([desc(4)], dummy_fn).skipped == [desc(4)]  # positional too
    with pytest.raises(TypeError, match="descriptors"):
        wrapper.prewarm(descriptors=[desc(2)], dummy_fn=dummy_fn)  # type: ignore[call-arg]
    snap = wrapper.cache.snapshot()
    assert (snap.captures, snap.hits, snap.misses) == (2, 0, 0)
    fresh = torch.randn(4, H)
    statics[4].copy_(fresh)
    torch.testing.assert_close(call(wrapper, desc(4), statics[4]), model(fresh))
    assert wrapper.cache.snapshot().hits == 1


class PiecewiseModel(nn.Module):
    """Two graphed pieces around an eager middle op; the eager op writes into a static buffer
    (as vLLM's attention writes into its output buffer), so piece 2 always reads one address."""

    def __init__(self, options: CUDAGraphOptions | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.piece1 = nn.Sequential(nn.Linear(H, H), nn.GELU())
        self.piece2 = nn.Sequential(nn.Linear(H, H), nn.LayerNorm(H))
        self.w1 = AdaptiveCUDAGraphWrapper(
            self.piece1, PIECEWISE, options, capture_threshold=1, name="piece1"
        )
        self.w2 = AdaptiveCUDAGraphWrapper(
            self.piece2, PIECEWISE, options, capture_threshold=1, name="piece2"
        )
        self.buf = torch.zeros(64, H)  # (T_max, H) static buffer of the eager middle op
        self.eager_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (T, H)
        h = self.w1(x)
        self.eager_calls += 1
        mid = self.buf[: x.shape[0]]
        torch.mul(h, 2.0, out=mid)  # stands in for attention: runs eagerly between pieces
        return self.w2(mid)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.piece2(self.piece1(x) * 2.0)


def test_nested_full_and_piecewise_contexts() -> None:
    model = PiecewiseModel(CUDAGraphOptions(debug_check_addresses=True))
    full = AdaptiveCUDAGraphWrapper(model, FULL, capture_threshold=1, name="full")
    static = torch.zeros(8, H)
    with torch.inference_mode():
        # FULL: only the outer wrapper graphs; the pieces run inside its capture, eagerly.
        for _ in range(3):
            fresh = torch.randn(8, H)
            static.copy_(fresh)
            out = call(full, BatchDescriptor(8, 2), static, FULL)
            torch.testing.assert_close(out, model.reference(fresh))
        assert full.get_cached_descriptors() == [BatchDescriptor(8, 2)]
        assert model.w1.get_cached_descriptors() == model.w2.get_cached_descriptors() == []
        assert model.w1.cache.snapshot().misses == 0

        # PIECEWISE: the outer wrapper is eager; the pieces graph, keyed by relaxed().
        for num_reqs in (2, 4, 8):  # same tokens, other request counts: same piece graphs
            fresh = torch.randn(8, H)
            static.copy_(fresh)
            out = call(full, BatchDescriptor(8, num_reqs), static, PIECEWISE)
            torch.testing.assert_close(out, model.reference(fresh))
        assert model.w1.get_cached_descriptors() == [BatchDescriptor(8)]
        assert model.w2.get_cached_descriptors() == [BatchDescriptor(8)]
        assert (model.w1.cache.snapshot().hits, model.w1.cache.snapshot().misses) == (2, 1)
        assert full.cache.snapshot().misses == 1  # unchanged by the PIECEWISE calls

        # An inner PIECEWISE context inside an outer FULL one: innermost wins, outer restored.
        with cudagraph_context(FULL, BatchDescriptor(8, 2)):
            with cudagraph_context(PIECEWISE, BatchDescriptor(8, 2)):
                model(static)
            full(static)
        assert model.w1.cache.snapshot().hits == 3
        assert full.cache.snapshot().hits == 3


def test_getattr_forwards_and_unwrap() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL)
    assert wrapper.unwrap() is model
    assert wrapper.training is False  # forwarded to the module
    assert len(list(wrapper.parameters())) == len(list(model.parameters()))
    with pytest.raises(AttributeError):
        wrapper.no_such_attribute  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_cached_graphs": 0}, ValueError, "max_cached_graphs must be an int >= 1"),
        ({"memory_budget_bytes": 0}, ValueError, "memory_budget_bytes must be an int >= 1"),
        ({"options": {"warmup_iters": 1}}, TypeError, "options must be CUDAGraphOptions"),
    ],
)
def test_bad_wrapper_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        CUDAGraphWrapper(make_model(), FULL, **kwargs)
    with pytest.raises(TypeError, match="runnable must be callable"):
        CUDAGraphWrapper(42, FULL)  # type: ignore[arg-type]


# ---------------------------------------------------------------- eviction (plain wrapper)


def test_lru_order() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL, max_cached_graphs=2)
    # The plain wrapper is a cache that captures at first sight and evicts by recency.
    assert wrapper.cache.config == CacheConfig(
        max_cached_graphs=2, capture_threshold=1, eviction="lru"
    )
    assert (
        wrapper.cache.config.capture_threshold == 1 and wrapper.cache.config.max_cached_graphs == 2
    )
    inputs = {b: torch.randn(b, H) for b in (1, 2, 3)}
    call(wrapper, desc(1), inputs[1])
    call(wrapper, desc(2), inputs[2])
    assert wrapper.get_cached_descriptors() == [desc(1), desc(2)]  # next victim first
    call(wrapper, desc(1), inputs[1])  # hit: 1 becomes most recently used
    assert wrapper.get_cached_descriptors() == [desc(2), desc(1)]
    call(wrapper, desc(3), inputs[3])  # capture: evicts the least recently used (2)
    assert wrapper.get_cached_descriptors() == [desc(1), desc(3)]
    snap = wrapper.cache.snapshot()
    assert (snap.evictions, snap.captures, snap.cached_graphs) == (1, 3, 2)
    # The evicted shape is a miss again and is recaptured, correctly.
    fresh = torch.randn(2, H)
    inputs[2].copy_(fresh)
    torch.testing.assert_close(call(wrapper, desc(2), inputs[2]), model(fresh))


def test_clear_drops_everything_and_is_not_an_eviction() -> None:
    wrapper = CUDAGraphWrapper(make_model(), FULL)
    for b in (1, 2):
        call(wrapper, desc(b), torch.randn(b, H))
    assert wrapper.cache.memory_bytes() == (1 + 2) * H * 4  # mock: output storage bytes
    assert wrapper.cache.clear() == 2
    assert wrapper.get_cached_descriptors() == [] and wrapper.cache.memory_bytes() == 0
    assert wrapper.cache.snapshot().evictions == 0


# ---------------------------------------------------------------- failures


def test_failing_capture_falls_back_to_eager_with_backoff() -> None:
    model = CaptureCounter()
    model.fail_capture = True
    options = CUDAGraphOptions(capture_retry_backoff_s=0.3, capture_retry_backoff_max_s=1.0)
    wrapper = AdaptiveCUDAGraphWrapper(model, FULL, options, capture_threshold=1)
    static = torch.randn(2, H)
    out = call(wrapper, desc(2), static)  # capture fails, answered eagerly
    torch.testing.assert_close(out, model.inner(static))
    assert model.capture_attempts == 1
    reason = wrapper.cache.capture_failure_reason(desc(2))
    assert reason is not None and "operation not permitted" in reason
    for _ in range(3):  # inside the back-off window: eager, no new capture attempt
        call(wrapper, desc(2), static)
    assert model.capture_attempts == 1
    snap = wrapper.cache.snapshot()
    assert (snap.capture_failures, snap.captures, snap.eager_runs) == (1, 0, 4)
    assert snap.misses == 4 and snap.hits == 0
    assert desc(2) not in wrapper.cache.predict_shapes(10)  # in back-off: not predicted either

    model.fail_capture = False  # e.g. memory was freed meanwhile
    time.sleep(0.35)
    fresh = torch.randn(2, H)
    static.copy_(fresh)
    torch.testing.assert_close(call(wrapper, desc(2), static), model.inner(fresh))
    assert model.capture_attempts == 2
    assert wrapper.get_cached_descriptors() == [desc(2)]
    assert wrapper.cache.capture_failure_reason(desc(2)) is None
    call(wrapper, desc(2), static)
    assert wrapper.cache.snapshot().hits == 1


def test_eager_failure_reaches_the_caller() -> None:
    model = make_model()
    wrapper = AdaptiveCUDAGraphWrapper(model, FULL, capture_threshold=1)
    bad = torch.randn(2, H + 1)  # the model itself cannot run this input
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        call(wrapper, desc(2), bad)
    snap = wrapper.cache.snapshot()
    assert snap.capture_failures == 1 and snap.cached_graphs == 0
    # The failed capture is recorded (back-off) although the eager fallback raised too: the
    # next call runs eagerly without another capture attempt.
    reason = wrapper.cache.capture_failure_reason(desc(2))
    assert reason is not None and "capture failed" in reason
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        call(wrapper, desc(2), bad)
    snap = wrapper.cache.snapshot()
    assert (snap.capture_failures, snap.eager_runs, snap.misses) == (1, 2, 2)
    good = torch.randn(4, H)  # other shapes are unaffected
    torch.testing.assert_close(call(wrapper, desc(4), good), model(good))


def test_failing_capture_does_not_leave_capture_mode() -> None:
    model = CaptureCounter()
    model.fail_capture = True
    wrapper = CUDAGraphWrapper(model, FULL)
    call(wrapper, desc(2), torch.randn(2, H))
    assert not is_capturing()


# ---------------------------------------------------------------- threads


def test_concurrent_callers_each_with_their_own_shape() -> None:
    model = make_model()
    wrapper = AdaptiveCUDAGraphWrapper(model, FULL, max_cached_graphs=8, capture_threshold=1)
    iterations, batches = 60, [1, 2, 3, 4]
    errors: list[BaseException] = []

    def worker(batch: int) -> None:
        try:
            gen = torch.Generator().manual_seed(batch)
            static = torch.zeros(batch, H)  # this thread's static input buffer
            with torch.inference_mode():
                for _ in range(iterations):
                    fresh = torch.randn(batch, H, generator=gen)
                    static.copy_(fresh)
                    got = call(wrapper, desc(batch), static).clone()
                    torch.testing.assert_close(got, model(fresh))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    snap = wrapper.cache.snapshot()
    total = iterations * len(batches)
    assert snap.hits + snap.misses == total
    assert snap.captures == snap.misses == len(batches)
    assert snap.replays == snap.hits == total - len(batches)
    assert sum(h.count for h in wrapper.get_hot_shapes(10)) == total


def test_concurrent_callers_sharing_a_shape_under_the_graph_lock() -> None:
    model = make_model()
    wrapper = CUDAGraphWrapper(model, FULL)
    static = torch.zeros(4, H)
    errors: list[BaseException] = []
    reader_done = threading.Event()
    snapshots: list[CacheSnapshot] = []

    def worker(seed: int) -> None:
        try:
            gen = torch.Generator().manual_seed(seed)
            for _ in range(40):
                fresh = torch.randn(4, H, generator=gen)
                with graph_lock():  # copy-in, replay and copy-out as one unit
                    static.copy_(fresh)
                    got = call(wrapper, desc(4), static).clone()
                torch.testing.assert_close(got, model(fresh))
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    def reader() -> None:  # the HTTP thread reading the view meanwhile
        while not reader_done.is_set():
            snapshots.append(wrapper.cache.snapshot())
            wrapper.cache.cached_entries()
            time.sleep(0.001)

    observer = threading.Thread(target=reader)
    observer.start()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader_done.set()
    observer.join()
    assert not errors, errors[0]
    snap = wrapper.cache.snapshot()
    assert (snap.hits, snap.misses, snap.captures) == (119, 1, 1)
    assert snapshots and all(s.hits + s.misses <= 120 for s in snapshots)


def test_mock_graph_used_on_cpu() -> None:
    wrapper = CUDAGraphWrapper(make_model(), FULL)
    static = torch.randn(2, H)
    call(wrapper, desc(2), static)
    entry = wrapper.cache.entry_for(desc(2))
    assert isinstance(entry, CacheEntry) and entry.descriptor == desc(2)
    [piece] = entry.pieces
    assert isinstance(piece, PieceGraph) and isinstance(piece.graph, MockCUDAGraph)
    assert piece.memory_bytes == entry.memory_bytes == 2 * H * 4
    assert piece.capture_seconds == entry.capture_seconds > 0
    assert piece.input_addresses == (static.data_ptr(),)
    assert piece.output.shape == (2, H)
    assert wrapper.cache.entry_for(desc(4)) is None
