"""The capture ladder: which sizes get a graph, and padding a count up to one of them."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

from app.cudagraph.errors import SizeAboveLadderError
from app.cudagraph.modes import CUDAGraphMode


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def default_ladder(limit: int) -> list[int]:
    """vLLM-style ladder up to ``limit`` (inclusive, always present).

    1, 2, 4, then steps of 8 up to 256, steps of 16 up to 512, then 8 steps per doubling
    (step 64 up to 1024, 128 up to 2048, ...): padding waste stays under ~12% at every size
    while the ladder for 8192 tokens has 83 rungs instead of ~500.
    """
    _check_positive("limit", limit)
    sizes = [1, 2, 4, *range(8, 257, 8), *range(272, 513, 16)]
    low = 512
    while low < limit:
        step = low // 8
        sizes.extend(range(low + step, 2 * low + 1, step))
        low *= 2
    ladder = sorted({s for s in sizes if s <= limit} | {limit})
    return ladder


def get_cudagraph_sizes(
    capture_sizes: Sequence[int] | None,
    max_num_reqs: int,
    max_num_tokens: int,
    mode: CUDAGraphMode,
) -> list[int]:
    """Sorted, de-duplicated sizes to capture for ``mode``.

    FULL graphs are keyed by batch size, so sizes are bounded by ``max_num_reqs``; PIECEWISE
    graphs by token count, bounded by ``max_num_tokens``. NONE captures nothing. Explicit sizes
    above the bound are dropped (the mode could never use them); with none given, the default
    ladder up to the bound is used, which always contains the bound itself.
    """
    mode = CUDAGraphMode(mode)
    _check_positive("max_num_reqs", max_num_reqs)
    _check_positive("max_num_tokens", max_num_tokens)
    if mode is CUDAGraphMode.NONE:
        return []
    limit, what = (
        (max_num_reqs, "max_num_reqs")
        if mode is CUDAGraphMode.FULL
        else (max_num_tokens, "max_num_tokens")
    )
    if capture_sizes is None:
        return default_ladder(limit)
    if isinstance(capture_sizes, str | bytes):
        raise ValueError("capture_sizes must be a sequence of ints, got a string")
    for size in capture_sizes:
        _check_positive("every capture size", size)
    usable = sorted({s for s in capture_sizes if s <= limit})
    if capture_sizes and not usable:
        raise ValueError(
            f"none of the capture sizes {sorted(set(capture_sizes))} fits {what}={limit} "
            f"in mode {mode.name}"
        )
    return usable


def pad_to_size(count: int, sizes: Sequence[int]) -> int:
    """The smallest size in ``sizes`` (ascending) that is >= ``count``.

    Raises ValueError for count < 1 or a ladder that is empty or not strictly ascending, and
    ``SizeAboveLadderError`` (a ValueError) when count is above the largest size.
    """
    _check_positive("count", count)
    if not sizes:
        raise ValueError("cannot pad to an empty ladder of sizes")
    if any(a >= b for a, b in zip(sizes, sizes[1:], strict=False)):
        raise ValueError(f"ladder sizes must be strictly ascending, got {list(sizes)}")
    index = bisect_left(sizes, count)
    if index == len(sizes):
        raise SizeAboveLadderError(count, sizes[-1])
    return sizes[index]
