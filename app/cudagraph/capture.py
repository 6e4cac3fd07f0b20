"""Capturing one graph (``capture_piece``, by the device of the inputs): CUDA or the mock.

On CUDA, PyTorch's and vLLM's recipe: warm-up on a side stream (lazy inits happen outside the
graph); synchronise and ``empty_cache``; capture on one capture stream per device (graphs sharing
a pool really share its memory) into the pool given; ``memory_bytes`` = the increase of
``memory_reserved()`` across the capture, what evicting the graph (own pool) gives back.
``capture_begin``/``capture_end`` are called directly so a failing capture always restores the
stream, hands its pool back and drops the half-built graph. On CPU a ``MockCUDAGraph`` records the
function; its ``memory_bytes`` is the byte size of the output, the least a real graph would pin.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from app.cudagraph.context import capturing
from app.cudagraph.entry import GraphHandle, PieceGraph
from app.cudagraph.gc_freeze import gc_frozen
from app.cudagraph.mock_graph import MockCUDAGraph, mock_graph_pool_handle
from app.cudagraph.options import CUDAGraphOptions
from app.cudagraph.tensors import find_device, input_addresses, storage_bytes, weak_ref_tree

logger = logging.getLogger("app.cudagraph")

_capture_streams: dict[int, torch.cuda.Stream] = {}


@dataclass(slots=True)
class CaptureResult:
    graph: GraphHandle
    output: Any
    seconds: float
    memory_bytes: int


def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _capture_streams.get(index)
    if stream is None:
        stream = torch.cuda.Stream(device=index)
        _capture_streams[index] = stream
    return stream


def capture_mock(
    fn: Callable[[], Any], *, warmup_iters: int, pool: Any, freeze_gc: bool
) -> CaptureResult:
    """Warm up and capture ``fn`` into a ``MockCUDAGraph`` (CPU)."""
    start = time.perf_counter()
    for _ in range(warmup_iters):
        fn()
    graph = MockCUDAGraph()
    with gc_frozen(freeze_gc):
        graph.capture_begin(pool)
        try:
            with capturing():
                output = fn()
            graph.record(fn, output)
            graph.capture_end()
        except BaseException:
            graph.reset()  # drop the half-built capture
            raise
    return CaptureResult(graph, output, time.perf_counter() - start, storage_bytes(output))


def capture_cuda(
    fn: Callable[[], Any],
    *,
    device: torch.device,
    warmup_iters: int,
    pool: Any,
    freeze_gc: bool,
) -> CaptureResult:
    """Warm up on a side stream and capture ``fn`` into a ``torch.cuda.CUDAGraph``.

    ``pool`` None means a pool of its own: a fresh ``graph_pool_handle()`` is used (rather than
    letting the graph make one internally) so that a failed capture can hand it back.
    """
    start = time.perf_counter()
    with torch.cuda.device(device):
        index = torch.cuda.current_device()
        pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        stream = _capture_stream(torch.device("cuda", index))
        current = torch.cuda.current_stream()
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(warmup_iters):
                fn()
        current.wait_stream(stream)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        reserved_before = torch.cuda.memory_reserved()
        allocated_before = torch.cuda.memory_allocated()
        graph = torch.cuda.CUDAGraph()
        with gc_frozen(freeze_gc), torch.cuda.stream(stream):
            try:
                graph.capture_begin(pool)
                with capturing():
                    output = fn()
            except BaseException:
                _abandon_capture(graph, index, pool, end_capture=True)
                raise
            try:
                graph.capture_end()
            except BaseException:
                _abandon_capture(graph, index, pool, end_capture=False)
                raise
        torch.cuda.synchronize()
        reserved = torch.cuda.memory_reserved() - reserved_before
        allocated = torch.cuda.memory_allocated() - allocated_before
    logger.debug("captured graph: reserved +%d bytes, allocated +%d bytes", reserved, allocated)
    return CaptureResult(graph, output, time.perf_counter() - start, max(0, reserved))


def _abandon_capture(graph: Any, index: int, pool: Any, *, end_capture: bool) -> None:
    """Leave a failed capture without leaking its pool or leaving the stream capturing.

    ``CUDAGraph.capture_end`` raises before telling the allocator the capture is over when the
    capture was invalidated (an op that cannot be captured, e.g. a host sync), and ``reset()``
    only releases the pool of a capture that ended. So: end the capture if still open; if the
    graph never reached "ended" (``pool()`` refuses), stop routing allocations to the pool and
    drop the reference ``capture_begin`` took; then reset. Every step is best effort.
    """
    if end_capture:
        with contextlib.suppress(Exception):
            graph.capture_end()
    try:
        graph.pool()
        ended = True
    except Exception:
        ended = False
    if not ended:
        with contextlib.suppress(Exception):
            torch._C._cuda_endAllocateToPool(index, pool)
        with contextlib.suppress(Exception):
            torch._C._cuda_releasePool(index, pool)
    with contextlib.suppress(Exception):
        graph.reset()
    _settle_rng_after_failed_capture(index)


def _settle_rng_after_failed_capture(index: int) -> None:
    """Clear the "capturing" flag a failed capture can leave on the CUDA generator (older
    PyTorch: only a successful ``capture_end`` clears it, and later random ops then raise). A
    one-op capture that ends well clears it; elsewhere it is a short no-op. Never raises."""
    with contextlib.suppress(Exception), torch.cuda.device(index):
        scratch = torch.zeros(1, device="cuda")  # allocated before, so nothing in the pool
        probe = torch.cuda.CUDAGraph()
        with torch.cuda.graph(probe):
            scratch.add_(1)
        probe.reset()


def capture_piece(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    options: CUDAGraphOptions,
    shared_pool: Callable[[bool], Any],
) -> PieceGraph:
    """Capture ``fn(*args, **kwargs)``; the args become the graph's static inputs.

    ``shared_pool(on_cuda)`` gives the pool to capture into, or None for a pool of its own.
    Raises whatever the capture raised (it cleaned up after itself)."""
    call = functools.partial(fn, *args, **kwargs)
    device = find_device(args, kwargs)
    on_cuda = device is not None and device.type == "cuda"
    pool = shared_pool(on_cuda)
    result: CaptureResult
    if on_cuda:
        assert device is not None
        result = capture_cuda(
            call,
            device=device,
            warmup_iters=options.warmup_iters,
            pool=pool,
            freeze_gc=options.freeze_gc,
        )
    else:
        result = capture_mock(
            call, warmup_iters=options.warmup_iters, pool=pool, freeze_gc=options.freeze_gc
        )
    output = weak_ref_tree(result.output) if options.weak_ref_output else result.output
    return PieceGraph(
        graph=result.graph,
        output=output,
        input_addresses=input_addresses(args, kwargs),
        static_inputs=(args, kwargs),
        capture_seconds=result.seconds,
        memory_bytes=result.memory_bytes,
    )


def new_pool_handle(on_cuda: bool) -> Any:
    """A pool id for the "shared" policy (real on CUDA, a mock id on CPU)."""
    if on_cuda:
        return torch.cuda.graph_pool_handle()
    return mock_graph_pool_handle()
