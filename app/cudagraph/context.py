"""The forward context: which mode and padded shape the current forward pass runs with.

The caller decides (mode, descriptor) and publishes it with ``cudagraph_context``; every wrapper
called inside reads it. A ``ContextVar`` makes it per thread and per asyncio task, and nesting
restores the outer context on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.modes import CUDAGraphMode


@dataclass(frozen=True, slots=True)
class ForwardContext:
    """mode: the runtime mode of this forward. descriptor: the padded batch (a wrapper's cache
    derives its key from it: PIECEWISE relaxes it)."""

    mode: CUDAGraphMode
    descriptor: BatchDescriptor | None


_FORWARD_CONTEXT: ContextVar[ForwardContext | None] = ContextVar(
    "cudagraph_forward_context", default=None
)
_CAPTURING: ContextVar[bool] = ContextVar("cudagraph_capturing", default=False)


@contextmanager
def cudagraph_context(
    mode: CUDAGraphMode | int,
    descriptor: BatchDescriptor | None,
) -> Iterator[ForwardContext]:
    """Publish (mode, descriptor) for the wrappers called inside the block.

    A graph mode needs a descriptor (the cache key); NONE may pass None.
    """
    mode = CUDAGraphMode(mode)
    if descriptor is not None and not isinstance(descriptor, BatchDescriptor):
        raise TypeError(f"descriptor must be a BatchDescriptor, got {type(descriptor).__name__}")
    if descriptor is None and mode.has_graphs():
        raise ValueError(f"mode {mode.name} needs a BatchDescriptor (the graph cache key)")
    ctx = ForwardContext(mode, descriptor)
    token = _FORWARD_CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        _FORWARD_CONTEXT.reset(token)


def get_forward_context() -> ForwardContext | None:
    """The innermost active context of this thread/task, or None outside any."""
    return _FORWARD_CONTEXT.get()


def is_capturing() -> bool:
    """True while this thread/task is inside a graph capture (real or mock).

    The analogue of ``torch.cuda.is_current_stream_capturing()`` that also covers mock graphs:
    model code can use it to keep host-side checks (``.item()``, asserts on values) out of a
    capture.
    """
    return _CAPTURING.get()


@contextmanager
def capturing() -> Iterator[None]:
    """Mark the block as a capture for ``is_capturing()`` (used by the capture routine)."""
    token = _CAPTURING.set(True)
    try:
        yield
    finally:
        _CAPTURING.reset(token)
