"""`EmbeddingRunner`: token ids in, L2-normalised embeddings out, through the graph cache.

The runner is the dispatcher of the graph design (the wrappers obey): for each call it plans
sub-batches (`buckets.BatchPlanner`), copies each one into static input buffers allocated once at
the largest bucket, publishes `cudagraph_context(mode, descriptor)` and runs the wrapped model,
then copies each request's row out of the graph's output (which the next replay overwrites).

Modes:
- FULL: padded `(B, S)` layout, one `AdaptiveCUDAGraphWrapper` around the whole forward, keyed
  `BatchDescriptor(num_tokens=B*S, num_reqs=B)`.
- PIECEWISE: packed `(T, H)` layout, one wrapper per piece of `BertEncoder.packed_pieces()`
  (grouped in a `CUDAGraphGroup`), keyed by the relaxed descriptor of the token bucket; attention
  runs eagerly between the pieces and writes into a static buffer the next piece reads.
- NONE: the packed layout with exactly the tokens of the batch, pieces called directly.

Not thread-safe: the service calls it from one worker thread.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.cudagraph import (
    AdaptiveCUDAGraphWrapper,
    BatchDescriptor,
    CUDAGraphGroup,
    CUDAGraphMode,
    CUDAGraphOptions,
    GraphCacheView,
    PrewarmReport,
    cudagraph_context,
)
from app.engine.buckets import BatchPlanner, SubBatch
from models import PackedLayout, PackedPiece, SentenceEncoder

# Fixed cost of one extra forward, in tokens, used to decide whether splitting a FULL batch by
# length beats padding it (see buckets.py). CPU: ~5 ms per forward vs ~0.15 ms per token for
# MiniLM; CUDA: a replay is cheap but each sub-batch pays host work and copies.
DEFAULT_SPLIT_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 256}


def int64_tensor(values: Iterable[int]) -> torch.Tensor:
    """A CPU int64 tensor of `values` through `array.array` (C loop, no per-element Python
    objects in torch): several times cheaper than `torch.tensor(list)` for a batch's ids."""
    buf = array.array("q", values)
    if not buf:
        return torch.empty(0, dtype=torch.int64)
    return torch.frombuffer(buf, dtype=torch.int64)  # shares, and keeps alive, buf's memory


@dataclass
class RunnerConfig:
    """How the runner pads, splits and caches graphs.

    capture_sizes: FULL batch-size ladder (None: `get_cudagraph_sizes` default up to
        max_batch_size). seq_buckets: FULL sequence buckets (None: 16, 32, 64, 128, 256), capped
        at the encoder's max_seq_len, which is always the top one. token_buckets: PIECEWISE token
        ladder (None: `buckets.default_token_ladder` up to max_num_tokens).
    max_num_tokens: tokens in one forward (FULL: padded B*S; PIECEWISE: the token bucket).
    max_cached_graphs, memory_budget_bytes, capture_threshold, min_replays_to_keep, options:
        passed to the adaptive wrapper(s). In PIECEWISE every piece holds up to
        max_cached_graphs graphs and gets an equal share of memory_budget_bytes.
    split_overhead_tokens: fixed cost of a forward in tokens, for FULL length grouping (None:
        by device, see DEFAULT_SPLIT_OVERHEAD_TOKENS).
    """

    mode: CUDAGraphMode = CUDAGraphMode.FULL
    max_batch_size: int = 32
    max_num_tokens: int = 8192
    capture_sizes: list[int] | None = None
    seq_buckets: list[int] | None = None
    token_buckets: list[int] | None = None
    max_cached_graphs: int = 64
    memory_budget_bytes: int | None = None
    capture_threshold: int = 1
    min_replays_to_keep: int = 2
    options: CUDAGraphOptions | None = None
    split_overhead_tokens: int | None = None


@dataclass
class RunResult:
    """embeddings: (n, dim) float32 on CPU, L2-normalised, in input order. real_tokens: tokens of
    the requests; padded_tokens: tokens the forwards processed. descriptors: one per sub-batch."""

    embeddings: torch.Tensor
    real_tokens: int
    padded_tokens: int
    descriptors: list[BatchDescriptor] = field(default_factory=list)


class EmbeddingRunner:
    """Runs a `SentenceEncoder` in the configured graph mode. See the module docstring."""

    def __init__(self, encoder: SentenceEncoder, config: RunnerConfig) -> None:
        self.encoder = encoder
        self.config = config
        self.mode = CUDAGraphMode(config.mode)
        self.device = encoder.device
        self.dtype = encoder.dtype
        self.hidden_size = encoder.dimensions
        self.pad_id = encoder.tokenizer.pad_id
        model = encoder.model
        overhead = config.split_overhead_tokens
        if overhead is None:
            overhead = DEFAULT_SPLIT_OVERHEAD_TOKENS.get(self.device.type, 32)
        self.planner = BatchPlanner(
            self.mode,
            max_seq_len=encoder.max_seq_len,
            max_batch_size=config.max_batch_size,
            max_num_tokens=config.max_num_tokens,
            capture_sizes=config.capture_sizes,
            seq_buckets=config.seq_buckets,
            token_buckets=config.token_buckets,
            split_overhead_tokens=overhead,
        )
        # Attention groups of the packed layout follow the sequence buckets (all but the top).
        self._group_bounds = tuple(self.planner.seq_buckets[:-1])
        self._ladder = frozenset(self.planner.ladder_descriptors())
        max_tokens = self.planner.max_tokens
        dev, H = self.device, self.hidden_size

        def wrap(
            runnable: Callable[..., Any], mode: CUDAGraphMode, name: str, budget: int | None
        ) -> AdaptiveCUDAGraphWrapper:
            return AdaptiveCUDAGraphWrapper(
                runnable,
                mode,
                config.options,
                max_cached_graphs=config.max_cached_graphs,
                min_replays_to_keep=config.min_replays_to_keep,
                capture_threshold=config.capture_threshold,
                memory_budget_bytes=budget,
                ladder=self.planner.ladder_descriptors() or None,
                name=name,
            )

        # Static inputs, allocated once at the largest bucket; calls and graphs use slices.
        self._ids = torch.full((max_tokens,), self.pad_id, dtype=torch.int64, device=dev)
        self._pieces: list[PackedPiece] = []
        self._piece_wrappers: list[AdaptiveCUDAGraphWrapper] = []
        self._full: AdaptiveCUDAGraphWrapper | None = None
        if self.mode is CUDAGraphMode.FULL:
            self._mask = torch.ones((max_tokens,), dtype=torch.bool, device=dev)
            self._full = wrap(model, self.mode, "bert_full", config.memory_budget_bytes)
            self.graphs: GraphCacheView = self._full
        else:
            # Packed layout: positions, two hidden buffers (the residual stream ping-pongs so no
            # piece writes its own input) and the attention output the eager attention fills.
            self._pos = torch.zeros((max_tokens,), dtype=torch.int64, device=dev)
            self._hidden = [torch.zeros((max_tokens, H), dtype=self.dtype, device=dev)]
            self._hidden.append(torch.zeros_like(self._hidden[0]))
            self._attn = torch.zeros_like(self._hidden[0])
            self._pieces = model.packed_pieces()
            if self.mode is CUDAGraphMode.PIECEWISE:
                budget = config.memory_budget_bytes
                share = None if budget is None else max(1, budget // len(self._pieces))
                self._piece_wrappers = [
                    wrap(p, self.mode, f"bert_piece{i}", share) for i, p in enumerate(self._pieces)
                ]
                self.graphs = CUDAGraphGroup(self._piece_wrappers)
            else:
                # NONE: never captures; a valid, empty view for metrics and the admin API.
                self.graphs = wrap(model, CUDAGraphMode.NONE, "bert_eager", None)
        # What the packed forward calls: the piece wrappers in PIECEWISE, the pieces in NONE.
        self._run_pieces: list[Callable[..., torch.Tensor]] = list(
            self._piece_wrappers or self._pieces
        )

    # ------------------------------------------------------------------ shapes

    @property
    def max_seq_len(self) -> int:
        return self.encoder.max_seq_len

    def descriptor_for_shape(self, batch_size: int, seq_len: int) -> BatchDescriptor:
        """The descriptor `batch_size` requests of `seq_len` tokens run with (ValueError when out
        of range or above the largest forward)."""
        return self.planner.descriptor_for_shape(batch_size, seq_len)

    def ladder_descriptors(self) -> list[BatchDescriptor]:
        """Every shape of the configured ladder, largest first (empty in NONE)."""
        return self.planner.ladder_descriptors()

    # ------------------------------------------------------------------ run

    @torch.inference_mode()
    def run(self, token_ids: list[list[int]]) -> RunResult:
        """Embeddings of tokenized requests ([CLS] ... [SEP], 1..max_seq_len ids each)."""
        n = len(token_ids)
        if n == 0:
            return RunResult(torch.empty((0, self.hidden_size)), 0, 0, [])
        lengths = [len(ids) for ids in token_ids]
        if min(lengths) < 1 or max(lengths) > self.max_seq_len:
            bad = next(i for i, k in enumerate(lengths) if not 1 <= k <= self.max_seq_len)
            raise ValueError(
                f"request {bad} has {lengths[bad]} tokens; each needs 1..{self.max_seq_len}"
            )
        out = torch.empty((n, self.hidden_size), dtype=torch.float32)
        padded = 0
        descriptors: list[BatchDescriptor] = []
        for sb in self.planner.plan(lengths):
            rows = [token_ids[i] for i in sb.indices]
            if self.mode is CUDAGraphMode.FULL:
                emb = self._run_full(sb, rows)
            else:
                emb = self._run_packed(sb, rows)
            # emb is graph memory (or a fresh tensor): copy the real rows out, in input order.
            out.index_copy_(0, torch.tensor(sb.indices), emb.to("cpu", torch.float32))
            padded += sb.num_tokens
            descriptors.append(sb.descriptor)
        return RunResult(out, sum(lengths), padded, descriptors)

    def _fill_full(self, B: int, S: int, rows: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """Write `rows` into the static (B, S) ids/mask views; padding rows are length-1 dummies
        (a row with no real token would make attention undefined).

        The padded ids are laid out in an `array.array` (row slices assigned in C) and handed to
        torch without a copy: host work that runs serially with every replay, ~7x cheaper than
        building tensors from Python lists (64x256: 0.22 against 1.46 ms, measured on CPU)."""
        ids = array.array("q", [self.pad_id]) * (B * S)
        lens = array.array("q", [1]) * B
        for i, row in enumerate(rows):
            if len(row) > S:  # the planner never does this; an array slice would grow silently
                raise ValueError(f"a row of {len(row)} tokens does not fit a ({B}, {S}) bucket")
            ids[i * S : i * S + len(row)] = array.array("q", row)
            lens[i] = len(row)
        lengths = torch.frombuffer(lens, dtype=torch.int64)
        ids_view = self._ids[: B * S].view(B, S)
        mask_view = self._mask[: B * S].view(B, S)
        ids_view.copy_(torch.frombuffer(ids, dtype=torch.int64).view(B, S))
        mask_view.copy_(torch.arange(S).view(1, S) < lengths.view(B, 1))
        return ids_view, mask_view

    def _run_full(self, sb: SubBatch, rows: list[list[int]]) -> torch.Tensor:
        assert self._full is not None
        ids, mask = self._fill_full(sb.batch, sb.seq_len, rows)
        with cudagraph_context(self.mode, sb.descriptor):
            emb = self._full(ids, mask)  # (B, H) float32: graph memory on a hit
        return emb[: len(rows)]

    def _fill_packed(
        self, rows: list[list[int]], lengths: tuple[int, ...], T_pad: int
    ) -> PackedLayout:
        layout = PackedLayout.build(
            lengths,
            hidden_size=self.hidden_size,
            device=self.device,
            dtype=self.dtype,
            group_bounds=self._group_bounds,
        )
        T = layout.num_tokens
        self._ids[:T].copy_(int64_tensor(itertools.chain(*rows)))
        self._pos[:T].copy_(layout.positions)
        if T_pad > T:  # token-bucket padding: pad ids at position 0, row-wise harmless
            self._ids[T:T_pad].fill_(self.pad_id)
            self._pos[T:T_pad].zero_()
        return layout

    def _forward_packed(self, layout: PackedLayout, T_pad: int) -> torch.Tensor:
        """The packed forward over the static buffers (pieces wrapped in PIECEWISE)."""
        pieces = self._run_pieces
        hidden, attn, attend = self._hidden, self._attn[:T_pad], self.encoder.model.attend_packed
        qkv = pieces[0](self._ids[:T_pad], self._pos[:T_pad], hidden[0][:T_pad])
        for i, piece in enumerate(pieces[1:]):
            attend(qkv, layout, attn)  # eager, per request: writes attn[:T]
            qkv = piece(hidden[i % 2][:T_pad], attn, hidden[(i + 1) % 2][:T_pad])
        return layout.pool(qkv)  # (B, H) float32, a fresh tensor

    def _run_packed(self, sb: SubBatch, rows: list[list[int]]) -> torch.Tensor:
        if self.mode is CUDAGraphMode.NONE and len(rows) == 1:
            return self._forward_one(rows[0])
        layout = self._fill_packed(rows, sb.lengths, sb.num_tokens)
        if self.mode is CUDAGraphMode.NONE:
            return self._forward_packed(layout, sb.num_tokens)
        with cudagraph_context(self.mode, sb.descriptor):
            return self._forward_packed(layout, sb.num_tokens)

    def _forward_one(self, row: list[int]) -> torch.Tensor:
        """NONE, one request: the padded forward at the request's own length. With one row
        neither layout pads anything, and this one skips the packed bookkeeping (the layout,
        the attention groups, the copies into static buffers): one text is the common case at
        low load."""
        ids = int64_tensor(row).to(self.device).view(1, len(row))
        return self.encoder.model(ids, torch.ones_like(ids, dtype=torch.bool))  # (1, H) f32

    # ------------------------------------------------------------------ prewarm

    def _check_on_ladder(self, descriptor: BatchDescriptor) -> None:
        if self.mode is CUDAGraphMode.PIECEWISE:
            if descriptor.num_tokens not in self.planner.token_buckets:
                raise ValueError(f"{descriptor} is not a token bucket of this runner")
            return
        if descriptor not in self._ladder:
            raise ValueError(f"{descriptor} is not a (batch, seq_len) shape of this runner")

    def _full_dummy(
        self, descriptor: BatchDescriptor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
        """Dummy inputs for a FULL capture: full-length rows of pad ids, in the static buffers."""
        self._check_on_ladder(descriptor)
        B = descriptor.num_reqs
        assert B is not None
        S = descriptor.num_tokens // B
        ids = self._ids[: B * S].view(B, S)
        mask = self._mask[: B * S].view(B, S)
        ids.fill_(self.pad_id)
        mask.fill_(True)
        return (ids, mask), {}

    def _packed_dummy_run(self, descriptor: BatchDescriptor) -> None:
        """One packed forward of `descriptor.num_tokens` dummy tokens (one request per <=
        max_seq_len tokens), under the group's prewarm context: every piece captures."""
        self._check_on_ladder(descriptor)
        T = descriptor.num_tokens
        full, rest = divmod(T, self.max_seq_len)
        lengths = (self.max_seq_len,) * full + ((rest,) if rest else ())
        rows = [[self.pad_id] * k for k in lengths]
        layout = self._fill_packed(rows, lengths, T)
        self._forward_packed(layout, T)

    @torch.inference_mode()
    def prewarm(self, descriptors: list[BatchDescriptor]) -> PrewarmReport:
        """Capture `descriptors` now, largest first, with dummy inputs in the static buffers.

        Lookups are not counted (hot-shape statistics stay traffic's). A descriptor that is not a
        shape of this runner's ladder is reported failed, with the reason. NONE: all skipped.
        """
        if self._full is not None:
            return self._full.prewarm(descriptors, self._full_dummy)
        if isinstance(self.graphs, CUDAGraphGroup):
            return self.graphs.prewarm(descriptors, self._packed_dummy_run)
        report = PrewarmReport()
        report.skipped = sorted(set(descriptors), key=BatchDescriptor.sort_key, reverse=True)
        return report
