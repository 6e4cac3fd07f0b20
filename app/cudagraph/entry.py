"""What the cache holds: one captured graph per piece (``PieceGraph``), and the cache entry of one
logical descriptor (``CacheEntry``), whose pieces are captured, charged and evicted together."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.cudagraph.descriptor import BatchDescriptor


class GraphHandle(Protocol):
    """What the cache needs of a graph: ``torch.cuda.CUDAGraph`` and ``MockCUDAGraph``."""

    def replay(self) -> None: ...

    def reset(self) -> None: ...


@dataclass(eq=False, slots=True)
class PieceGraph:
    """graph: the graph (real or mock). output: what a replay returns (graph memory, overwritten
    by the next replay). input_addresses: data pointers of the captured tensor inputs (debug
    check). static_inputs: the captured args/kwargs, kept alive so their memory cannot be reused
    under the graph. capture_seconds: warm-up included. memory_bytes: what the graph pins."""

    graph: GraphHandle
    output: Any
    input_addresses: tuple[int, ...]
    static_inputs: tuple[tuple[Any, ...], dict[str, Any]]
    capture_seconds: float
    memory_bytes: int

    def release(self) -> None:
        """Drop the graph and every tensor reference it kept."""
        self.graph.reset()
        self.output = None
        self.static_inputs = ((), {})


@dataclass(eq=False, slots=True)
class CacheEntry:
    """One cached descriptor: a graph per piece. last_used: ``time.time()`` of the last replay
    (or the capture). captured_at_lookup / last_used_lookup: the cache's lookup counter at capture
    and at last use (recency without clocks)."""

    descriptor: BatchDescriptor
    pieces: list[PieceGraph]
    replay_count: int = 0
    last_used: float = field(default_factory=time.time)
    captured_at_lookup: int = 0
    last_used_lookup: int = 0

    @property
    def memory_bytes(self) -> int:
        return sum(piece.memory_bytes for piece in self.pieces)

    @property
    def capture_seconds(self) -> float:
        return sum(piece.capture_seconds for piece in self.pieces)

    def touch(self, lookup: int) -> None:
        """Account one replay at the cache's lookup counter ``lookup``."""
        self.replay_count += 1
        self.last_used = time.time()
        self.last_used_lookup = lookup

    def release(self) -> None:
        for piece in self.pieces:
            piece.release()
