"""Executors: ``GraphForward`` runs one forward the way the cache decided (replays, captures or
runs each piece eagerly); ``GraphMemory`` hands out capture pools and gives memory back. Neither
holds policy: what to capture, keep or evict is the ``GraphCache``'s.

The caller runs every graphed piece of the model through it, ``forward(i, piece, *args)``, in
the same order each time. FULL has one piece (the whole model), PIECEWISE one per graphed span.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

import torch

from app.cudagraph.capture import capture_piece, new_pool_handle
from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.entry import CacheEntry, PieceGraph
from app.cudagraph.errors import InputAddressMismatchError
from app.cudagraph.mock_graph import MockCUDAGraph
from app.cudagraph.options import CUDAGraphOptions, PoolPolicy
from app.cudagraph.tensors import input_addresses


class Action(enum.Enum):
    EAGER = "eager"
    REPLAY = "replay"
    CAPTURE = "capture"


class GraphMemory:
    """ "per_graph": each graph gets a pool of its own, so releasing it frees its memory.
    "shared": one pool per device kind for all graphs of a cache, freed once all are gone."""

    def __init__(self, policy: PoolPolicy) -> None:
        self._policy = policy
        self._shared: dict[bool, Any] = {}  # on_cuda -> pool

    def pool(self, on_cuda: bool) -> Any:
        """The pool to capture into (None: the graph's own)."""
        if self._policy != "shared":
            return None
        if on_cuda not in self._shared:
            self._shared[on_cuda] = new_pool_handle(on_cuda)
        return self._shared[on_cuda]

    def release(self, entries: list[CacheEntry], *, cache_empty: bool, freed: bool = False) -> None:
        """Drop ``entries`` (and the shared pools once the cache is empty), then hand the freed
        device memory back. ``freed``: something was already dropped (a refused capture)."""
        on_cuda = freed or any(
            not isinstance(p.graph, MockCUDAGraph) for e in entries for p in e.pieces
        )
        for entry in entries:
            entry.release()
        if cache_empty and self._shared:
            on_cuda = on_cuda or True in self._shared
            self._shared.clear()
        if on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()


_OWN_POOLS = GraphMemory("per_graph")  # stateless: every graph gets a pool of its own


class GraphForward:
    """One forward. REPLAY: each piece replays its graph and returns its output (graph memory,
    overwritten by the next replay). CAPTURE: each piece is captured with the args given (they
    become the graph's static inputs) and replayed once for this call's answer; after a failed
    capture the rest of the forward runs eagerly and ``failure`` says why. EAGER: plain calls."""

    def __init__(
        self,
        action: Action,
        descriptor: BatchDescriptor | None = None,
        entry: CacheEntry | None = None,
        *,
        num_pieces: int = 1,
        options: CUDAGraphOptions | None = None,
        memory: GraphMemory | None = None,
    ) -> None:
        self.action = action
        self.descriptor = descriptor
        self.entry = entry
        self.captured: list[PieceGraph | None] = (
            [None] * num_pieces if action is Action.CAPTURE else []
        )
        self.failure: str | None = None
        self.refused = False  # the cache refused to keep what this forward captured
        self.seconds = 0.0  # capture wall time, failed attempts included
        self._options = options if options is not None else CUDAGraphOptions()
        self._memory = memory if memory is not None else _OWN_POOLS

    def __call__(self, piece: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.action is Action.REPLAY:
            assert self.entry is not None
            graph = self.entry.pieces[piece]
            if self._options.debug_check_addresses:
                given = input_addresses(args, kwargs)
                if given != graph.input_addresses:
                    raise InputAddressMismatchError(
                        self.entry.descriptor, graph.input_addresses, given
                    )
            graph.graph.replay()
            return graph.output
        if self.action is Action.CAPTURE and self.failure is None:
            return self._capture(piece, fn, args, kwargs)
        return fn(*args, **kwargs)

    def _capture(
        self, piece: int, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        where = f"piece {piece}: " if len(self.captured) > 1 else ""
        if self.captured[piece] is not None:
            self.failure = f"{where}called twice in one forward"
            return fn(*args, **kwargs)
        start = time.perf_counter()
        try:
            graph = capture_piece(fn, args, kwargs, self._options, self._memory.pool)
        except Exception as exc:  # OOM, an op that cannot be captured, the model raising
            self.seconds += time.perf_counter() - start
            self.failure = f"{where}capture failed: {type(exc).__name__}: {exc}"
            # Any exception here is the model failing for this input: it reaches the caller.
            return fn(*args, **kwargs)
        self.seconds += graph.capture_seconds
        self.captured[piece] = graph
        graph.graph.replay()  # a real capture executes nothing: replay once for this answer
        return graph.output

    def take_entry(self) -> CacheEntry | None:
        """The entry of what this forward captured, if it captured every piece; else None, with
        ``failure`` saying why and the pieces it did capture released."""
        missing = [i for i, graph in enumerate(self.captured) if graph is None]
        if self.failure is None and missing:
            self.failure = f"pieces {missing} were not called during the forward"
        if self.failure is not None:
            self.release_captured()
            return None
        assert self.descriptor is not None
        entry = CacheEntry(self.descriptor, [g for g in self.captured if g is not None])
        self.captured = []
        return entry

    def release_captured(self) -> None:
        """Drop every graph this forward captured (a failed or refused capture)."""
        for graph in self.captured:
            if graph is not None:
                graph.release()
        self.captured = []


EAGER = GraphForward(Action.EAGER)
