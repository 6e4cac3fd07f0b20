"""Which shapes are likely to be needed next (candidates for a prewarm).

1. Hot shapes without a graph, most requested first: traffic already asked for them (they are
   below the capture threshold, were evicted, or failed and their back-off has passed).
2. Ladder neighbours of hot shapes, hottest first: traffic drifts to the next padded size up
   or down. With a known ladder (the runner's padded shapes), the neighbours of a hot shape are
   the nearest ladder entry with more tokens and the nearest with fewer, where "nearest" is the
   distance |log2(tokens ratio)| + |log2(requests ratio)| (so a FULL (batch, seq) grid prefers
   the same batch with the next seq bucket). Without a ladder they are derived: double and
   halve ``num_tokens``, keeping ``num_reqs`` (the halved one only if still >= num_reqs).
Shapes already cached or currently in capture back-off are never predicted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from app.cudagraph.descriptor import BatchDescriptor


def _distance(a: BatchDescriptor, b: BatchDescriptor) -> float:
    reqs = abs(math.log2((a.num_reqs or 1) / (b.num_reqs or 1)))
    return (
        abs(math.log2(a.num_tokens / b.num_tokens))
        + reqs
        + (a.is_uniform_decode != b.is_uniform_decode)
    )


def neighbours(
    shape: BatchDescriptor, ladder: Sequence[BatchDescriptor] | None
) -> list[BatchDescriptor]:
    """The next larger and the next smaller shape (larger first)."""
    if ladder:
        larger = [d for d in ladder if d.num_tokens > shape.num_tokens]
        smaller = [d for d in ladder if d.num_tokens < shape.num_tokens]
        found = []
        for side in (larger, smaller):
            if side:
                found.append(min(side, key=lambda d: (_distance(d, shape), d.sort_key())))
        return found
    found = [BatchDescriptor(shape.num_tokens * 2, shape.num_reqs, shape.is_uniform_decode)]
    half = shape.num_tokens // 2
    if half >= max(1, shape.num_reqs or 1) and half < shape.num_tokens:
        found.append(BatchDescriptor(half, shape.num_reqs, shape.is_uniform_decode))
    return found


def predict(
    hot: Sequence[BatchDescriptor],
    cached: set[BatchDescriptor],
    blocked: set[BatchDescriptor],
    ladder: Sequence[BatchDescriptor] | None,
    top_k: int,
) -> list[BatchDescriptor]:
    """``hot`` is ordered most requested first. Returns at most ``top_k`` distinct shapes."""
    if top_k < 1:
        return []
    out: list[BatchDescriptor] = []
    seen = set(cached) | set(blocked)
    for shape in hot:
        if shape not in seen:
            out.append(shape)
            seen.add(shape)
            if len(out) == top_k:
                return out
    for shape in hot:
        for near in neighbours(shape, ladder):
            if near not in seen:
                out.append(near)
                seen.add(near)
                if len(out) == top_k:
                    return out
    return out
