"""Bucket ladders and batch planning: which padded shape each sub-batch of a call runs at.

FULL pads a sub-batch to (B, S) from the batch-size ladder and the sequence buckets; PIECEWISE
packs its tokens and pads the count to a token bucket; NONE runs the exact packed tokens. A call
larger than the largest bucket (too many requests or too many tokens) is split, never dropped.

In FULL mode every row costs the padded sequence length, so a short request batched with a long
one pays for the long one. The planner groups requests by sequence bucket and merges neighbouring
groups only when padding costs less than an extra forward (`split_overhead_tokens`, the fixed
cost of one forward expressed in tokens): a small dynamic programme over at most a handful of
buckets. Packed modes pad nothing per request, so they only split when a limit forces it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from app.cudagraph import BatchDescriptor, CUDAGraphMode, get_cudagraph_sizes, pad_to_size

SMALLEST_SEQ_BUCKET = 16


def _check_ladder(name: str, sizes: Sequence[int]) -> list[int]:
    if isinstance(sizes, str | bytes):
        raise ValueError(f"{name} must be a list of ints, got a string")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"{name} must hold ints >= 1, got {s!r}")
    return sorted(set(sizes))


def seq_ladder(buckets: Sequence[int] | None, max_seq_len: int) -> list[int]:
    """Sequence buckets capped at max_seq_len, which is always the top rung (every request fits).
    None: powers of two from 16 (a long-context model's short texts never pad to its maximum)."""
    if buckets is None:
        buckets = [SMALLEST_SEQ_BUCKET << i for i in range(max(1, max_seq_len.bit_length()))]
    sizes = _check_ladder("seq_buckets", buckets)
    return sorted({s for s in sizes if s < max_seq_len} | {max_seq_len})


def default_token_ladder(limit: int) -> list[int]:
    """16, 32, 48, 64, then 4 rungs per doubling (80, 96, 112, 128, 160, ...) up to `limit`.

    At most 25% token padding with ~32 rungs for 8192 tokens: on a CPU padded tokens cost real
    compute, and fewer rungs means fewer graphs to capture for a full ladder.
    """
    sizes = [16, 32, 48, 64]
    low = 64
    while low < limit:
        step = low // 4
        sizes.extend(range(low + step, 2 * low + 1, step))
        low *= 2
    return sorted({s for s in sizes if s < limit} | {limit})


@dataclass(frozen=True, slots=True)
class SubBatch:
    """One forward of a call.

    indices: positions in the call's input, in the order their rows are laid out.
    batch, seq_len: FULL: the padded (B, S); otherwise the real request count and longest length.
    num_tokens: tokens the forward processes (FULL B*S, PIECEWISE the token bucket, NONE real).
    """

    indices: tuple[int, ...]
    lengths: tuple[int, ...]
    batch: int
    seq_len: int
    num_tokens: int
    descriptor: BatchDescriptor


class BatchPlanner:
    """Turns the lengths of a call's requests into sub-batches and their descriptors."""

    def __init__(
        self,
        mode: CUDAGraphMode,
        *,
        max_seq_len: int,
        max_batch_size: int,
        max_num_tokens: int,
        capture_sizes: Sequence[int] | None = None,
        seq_buckets: Sequence[int] | None = None,
        token_buckets: Sequence[int] | None = None,
        split_overhead_tokens: int = 32,
    ) -> None:
        self.mode = CUDAGraphMode(mode)
        for name, v in (
            ("max_seq_len", max_seq_len),
            ("max_batch_size", max_batch_size),
            ("max_num_tokens", max_num_tokens),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if split_overhead_tokens < 0:
            raise ValueError(f"split_overhead_tokens must be >= 0, got {split_overhead_tokens}")
        if max_num_tokens < max_seq_len:
            raise ValueError(
                f"max_num_tokens ({max_num_tokens}) must be >= max_seq_len ({max_seq_len}): "
                "one request of the longest length must fit a forward"
            )
        self.max_seq_len = max_seq_len
        self.split_overhead_tokens = split_overhead_tokens
        self.seq_buckets = seq_ladder(seq_buckets, max_seq_len)
        self.batch_sizes: list[int] = []
        self.token_buckets: list[int] = []
        self._full_cap: dict[int, int] = {}
        if self.mode is CUDAGraphMode.FULL:
            self.batch_sizes = get_cudagraph_sizes(
                None if capture_sizes is None else list(capture_sizes),
                max_batch_size,
                max_num_tokens,
                CUDAGraphMode.FULL,
            )
            for S in self.seq_buckets:
                fitting = [b for b in self.batch_sizes if b * S <= max_num_tokens]
                if not fitting:
                    raise ValueError(
                        f"no batch size of {self.batch_sizes} fits sequence bucket {S} within "
                        f"max_num_tokens={max_num_tokens}"
                    )
                self._full_cap[S] = fitting[-1]
            self.max_requests = self.batch_sizes[-1]
            self.max_tokens = max(b * S for S, b in self._full_cap.items())
        elif self.mode is CUDAGraphMode.PIECEWISE:
            ladder = (
                default_token_ladder(max_num_tokens)
                if token_buckets is None
                else _check_ladder("token_buckets", token_buckets)
            )
            self.token_buckets = get_cudagraph_sizes(
                ladder, max_batch_size, max_num_tokens, CUDAGraphMode.PIECEWISE
            )
            if self.token_buckets[-1] < max_seq_len:
                raise ValueError(
                    f"the largest token bucket ({self.token_buckets[-1]}) must be >= "
                    f"max_seq_len ({max_seq_len})"
                )
            self.max_requests = max_batch_size
            self.max_tokens = self.token_buckets[-1]
        else:
            self.max_requests = max_batch_size
            self.max_tokens = max_num_tokens
        # O(1) padding on the hot path: length -> sequence bucket, count -> padded batch size.
        self._seq_of = [0] + [pad_to_size(n, self.seq_buckets) for n in range(1, max_seq_len + 1)]
        top = self.batch_sizes[-1] if self.batch_sizes else 0
        self._batch_of = [0] + [pad_to_size(n, self.batch_sizes) for n in range(1, top + 1)]

    # ------------------------------------------------------------------ shapes

    def descriptor_for_shape(self, batch_size: int, seq_len: int) -> BatchDescriptor:
        """The descriptor a batch of `batch_size` requests of `seq_len` tokens each runs with."""
        if not 1 <= batch_size <= self.max_requests:
            raise ValueError(f"batch_size {batch_size} is outside 1..{self.max_requests}")
        if not 1 <= seq_len <= self.max_seq_len:
            raise ValueError(f"seq_len {seq_len} is outside 1..{self.max_seq_len}")
        if self.mode is CUDAGraphMode.FULL:
            S = pad_to_size(seq_len, self.seq_buckets)
            B = pad_to_size(batch_size, self.batch_sizes)
            if B * S > self.max_tokens or batch_size > self._full_cap[S]:
                raise ValueError(
                    f"{batch_size} x {seq_len} pads to {B} x {S} = {B * S} tokens, above "
                    f"the largest forward ({self._full_cap[S]} requests at {S} tokens): "
                    "it would be split"
                )
            return BatchDescriptor(num_tokens=B * S, num_reqs=B)
        tokens = batch_size * seq_len
        if tokens > self.max_tokens:
            raise ValueError(
                f"{batch_size} x {seq_len} = {tokens} tokens is above max {self.max_tokens}"
            )
        if self.mode is CUDAGraphMode.PIECEWISE:
            return BatchDescriptor(num_tokens=pad_to_size(tokens, self.token_buckets))
        return BatchDescriptor(num_tokens=tokens, num_reqs=batch_size)

    def ladder_descriptors(self) -> list[BatchDescriptor]:
        """Every shape of the configured ladder, largest first (empty in NONE)."""
        if self.mode is CUDAGraphMode.FULL:
            shapes = [
                BatchDescriptor(num_tokens=B * S, num_reqs=B)
                for S in self.seq_buckets
                for B in self.batch_sizes
                if B <= self._full_cap[S]
            ]
        elif self.mode is CUDAGraphMode.PIECEWISE:
            shapes = [BatchDescriptor(num_tokens=t) for t in self.token_buckets]
        else:
            shapes = []
        return sorted(shapes, key=BatchDescriptor.sort_key, reverse=True)

    # ------------------------------------------------------------------ planning

    def plan(self, lengths: Sequence[int]) -> list[SubBatch]:
        """Sub-batches covering every request exactly once. Lengths must be 1..max_seq_len."""
        if not lengths:
            return []
        if min(lengths) < 1 or max(lengths) > self.max_seq_len:
            raise ValueError(f"request lengths must be within 1..{self.max_seq_len} tokens")
        if self.mode is CUDAGraphMode.FULL:
            return self._plan_full(lengths)
        return self._plan_packed(lengths)

    def _full_cost(self, count: int, S: int) -> float:
        """Token-equivalent cost of `count` requests at sequence bucket S (FULL)."""
        cap = self._full_cap[S]
        full, rem = divmod(count, cap)
        padded_rows = full * cap + self._batch_of[rem]
        forwards = full + (1 if rem else 0)
        return forwards * self.split_overhead_tokens + padded_rows * S

    def _plan_full(self, lengths: Sequence[int]) -> list[SubBatch]:
        order = sorted(range(len(lengths)), key=lengths.__getitem__)  # ascending length
        # Groups of requests sharing a sequence bucket, ascending.
        groups: list[tuple[int, list[int]]] = []
        for i in order:
            S = self._seq_of[lengths[i]]
            if groups and groups[-1][0] == S:
                groups[-1][1].append(i)
            else:
                groups.append((S, [i]))
        # best[j]: cheapest cover of groups[:j]; start[j]: first group of the last merged range.
        G = len(groups)
        best = [0.0] + [math.inf] * G
        start = [0] * (G + 1)
        for j in range(1, G + 1):
            S, count = groups[j - 1][0], 0
            for i in range(j, 0, -1):
                count += len(groups[i - 1][1])
                cost = best[i - 1] + self._full_cost(count, S)
                if cost < best[j]:
                    best[j], start[j] = cost, i - 1
        ranges: list[tuple[int, list[int]]] = []
        j = G
        while j > 0:
            i = start[j]
            members = [r for _, idx in groups[i:j] for r in idx]
            ranges.append((groups[j - 1][0], members))
            j = i
        out: list[SubBatch] = []
        for S, members in ranges:  # longest bucket first
            cap = self._full_cap[S]
            members = members[::-1]  # longest first: the remainder chunk holds the shortest
            for c in range(0, len(members), cap):
                idx = tuple(members[c : c + cap])
                lens = tuple(lengths[i] for i in idx)
                B = self._batch_of[len(idx)]
                out.append(SubBatch(idx, lens, B, S, B * S, BatchDescriptor(B * S, num_reqs=B)))
        return out

    def _plan_packed(self, lengths: Sequence[int]) -> list[SubBatch]:
        # Longest first: a sub-batch's attention groups (by length class) are then contiguous.
        order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
        out: list[SubBatch] = []
        chunk: list[int] = []
        tokens = 0
        for i in order:
            n = lengths[i]
            if chunk and (len(chunk) == self.max_requests or tokens + n > self.max_tokens):
                out.append(self._packed_batch(chunk, lengths, tokens))
                chunk, tokens = [], 0
            chunk.append(i)
            tokens += n
        out.append(self._packed_batch(chunk, lengths, tokens))
        return out

    def _packed_batch(self, chunk: list[int], lengths: Sequence[int], tokens: int) -> SubBatch:
        lens = tuple(lengths[i] for i in chunk)
        if self.mode is CUDAGraphMode.PIECEWISE:
            padded = pad_to_size(tokens, self.token_buckets)
            desc = BatchDescriptor(num_tokens=padded)
        else:
            padded = tokens
            desc = BatchDescriptor(num_tokens=tokens, num_reqs=len(chunk))
        return SubBatch(tuple(chunk), lens, len(chunk), max(lens), padded, desc)
