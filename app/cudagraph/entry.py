"""``CUDAGraphEntry``: one captured graph and what it needs to be replayed and accounted."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.cudagraph.descriptor import BatchDescriptor


class GraphHandle(Protocol):
    """What the wrapper needs of a graph: ``torch.cuda.CUDAGraph`` and ``MockCUDAGraph``."""

    def replay(self) -> None: ...

    def reset(self) -> None: ...


@dataclass(eq=False, slots=True)
class CUDAGraphEntry:
    """batch_descriptor: the cache key. cudagraph: the graph (real or mock). output: what a
    replay returns (graph memory, overwritten by the next replay). input_addresses: data
    pointers of the captured tensor inputs (debug check). capture_time: seconds the capture took,
    warm-up included. memory_bytes: what the graph pins (see docs/cudagraph.md). static_inputs:
    the captured args/kwargs, kept alive so their memory cannot be reused under the graph.
    last_used: ``time.time()`` of the last replay (or the capture). captured_at_lookup /
    last_used_lookup: the owner's lookup counter at capture and at last use (recency without
    clocks).
    """

    batch_descriptor: BatchDescriptor
    cudagraph: GraphHandle
    output: Any
    input_addresses: tuple[int, ...]
    capture_time: float
    memory_bytes: int
    static_inputs: tuple[tuple[Any, ...], dict[str, Any]] = field(default_factory=lambda: ((), {}))
    replay_count: int = 0
    last_used: float = field(default_factory=time.time)
    captured_at_lookup: int = 0
    last_used_lookup: int = 0

    def increment_replay(self, lookup: int = 0) -> None:
        """Account one replay at the owner's lookup counter ``lookup``."""
        self.replay_count += 1
        self.last_used = time.time()
        self.last_used_lookup = lookup

    def release(self) -> None:
        """Drop the graph and every tensor reference (eviction / clear)."""
        self.cudagraph.reset()
        self.output = None
        self.static_inputs = ((), {})
