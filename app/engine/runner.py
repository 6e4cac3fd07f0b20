"""`EmbeddingRunner`: token ids in, embeddings out, through the model's one graph cache.

For each call it plans sub-batches (`buckets.BatchPlanner`), copies each one into static input
buffers allocated once at the largest bucket, lets the `GraphCache` decide the forward (replay,
capture or eager) and runs the model's pieces through it, then copies each request's row out of
the graph's output (which the next replay overwrites) before the next forward.

Modes:
- FULL: padded `(B, S)` layout, one piece (the whole forward), keyed
  `BatchDescriptor(num_tokens=B*S, num_reqs=B)`.
- PIECEWISE: packed `(T, H)` layout, one piece per span of `SentenceModel.packed_pieces()`, keyed by
  the token bucket; attention runs eagerly between the pieces and writes into a static buffer
  the next piece reads.
- NONE: the packed layout with exactly the tokens of the batch, pieces called directly.

Captures never hold up a call: a shape that crosses the capture threshold is answered eagerly
and captured by `idle_capture`, which the engine calls between batches.

Not thread-safe: the service calls it from one worker thread.
"""

from __future__ import annotations

import array
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from app.cudagraph import (
    BatchDescriptor,
    CUDAGraphMode,
    GraphCache,
    GraphForward,
    PrewarmProgress,
    PrewarmReport,
)
from app.cudagraph.cache import ProgressFn
from app.engine.buckets import BatchPlanner, SubBatch
from app.engine.config import RunnerConfig
from models import PackedLayout, PackedPiece, SentenceEncoder

# Fixed cost of one extra forward, in tokens, used to decide whether splitting a FULL batch by
# length beats padding it (see buckets.py): a CPU forward has a large fixed cost, a replay little.
DEFAULT_SPLIT_OVERHEAD_TOKENS = {"cpu": 32, "cuda": 256}


def int64_tensor(values: Iterable[int]) -> torch.Tensor:
    """A CPU int64 tensor of `values` through `array.array` (C loop, no per-element Python
    objects in torch): several times cheaper than `torch.tensor(list)` for a batch's ids."""
    buf = array.array("q", values)
    if not buf:
        return torch.empty(0, dtype=torch.int64)
    return torch.frombuffer(buf, dtype=torch.int64)  # shares, and keeps alive, buf's memory


@dataclass
class RunResult:
    """embeddings: (n, dim) float32 on CPU, in input order. real_tokens: tokens of the requests;
    padded_tokens: tokens the forwards processed. descriptors: one per sub-batch."""

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
        self.hidden_size = encoder.hidden_size  # the packed buffers' width
        self.dimensions = encoder.dimensions  # the embeddings' width
        self.pad_id = encoder.tokenizer.pad_id
        self._model = model = encoder.model
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
        max_tokens = self.planner.max_tokens
        dev, H = self.device, self.hidden_size

        # Static inputs, allocated once at the largest bucket; calls and graphs use slices.
        self._ids = torch.full((max_tokens,), self.pad_id, dtype=torch.int64, device=dev)
        self._pieces: list[PackedPiece] = []
        if self.mode is CUDAGraphMode.FULL:
            self._mask = torch.ones((max_tokens,), dtype=torch.bool, device=dev)
        else:
            # Packed layout: positions, two hidden buffers (the residual stream ping-pongs so no
            # piece writes its own input) and the attention output the eager attention fills.
            self._pos = torch.zeros((max_tokens,), dtype=torch.int64, device=dev)
            self._hidden = [torch.zeros((max_tokens, H), dtype=self.dtype, device=dev)]
            self._hidden.append(torch.zeros_like(self._hidden[0]))
            A = encoder.attention_width
            self._attn = torch.zeros((max_tokens, A), dtype=self.dtype, device=dev)
            self._pieces = model.packed_pieces()
        # The model's one graph cache (NONE: never captures; a valid, empty view).
        self.graphs = GraphCache(
            self.mode,
            config.cache,
            config.options,
            pieces=len(self._pieces) if self.mode is CUDAGraphMode.PIECEWISE else 1,
            ladder=self.planner.ladder_descriptors() or None,
            defer_captures=True,
            name=f"{encoder.name}/{self.mode.name}",
        )
        self._ladder_keys = frozenset(self.graphs.key_for(d) for d in self.ladder_descriptors())

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
            return RunResult(torch.empty((0, self.dimensions)), 0, 0, [])
        lengths = [len(ids) for ids in token_ids]
        if min(lengths) < 1 or max(lengths) > self.max_seq_len:
            bad = next(i for i, k in enumerate(lengths) if not 1 <= k <= self.max_seq_len)
            raise ValueError(
                f"request {bad} has {lengths[bad]} tokens; each needs 1..{self.max_seq_len}"
            )
        out = torch.empty((n, self.dimensions), dtype=torch.float32)
        padded = 0
        descriptors: list[BatchDescriptor] = []
        for sb in self.planner.plan(lengths):
            rows = [token_ids[i] for i in sb.indices]
            if self.mode is CUDAGraphMode.NONE and len(rows) == 1:
                self._copy_out(out, sb, self._forward_one(rows[0]))
            else:
                with self.graphs.forward(sb.descriptor) as forward:
                    if self.mode is CUDAGraphMode.FULL:
                        emb = self._run_full(sb, rows, forward)
                    else:
                        emb = self._run_packed(sb, rows, forward)
                    # emb may be graph memory: copy the rows out before the next forward.
                    self._copy_out(out, sb, emb)
            padded += sb.num_tokens
            descriptors.append(sb.descriptor)
        return RunResult(out, sum(lengths), padded, descriptors)

    @staticmethod
    def _copy_out(out: torch.Tensor, sb: SubBatch, emb: torch.Tensor) -> None:
        out.index_copy_(0, torch.tensor(sb.indices), emb.to("cpu", torch.float32))

    def _fill_full(self, B: int, S: int, rows: list[list[int]]) -> tuple[torch.Tensor, ...]:
        """Write `rows` into the static (B, S) ids/mask views; padding rows are length-1 dummies
        (a row with no real token would make attention undefined). The padded ids are laid out
        in an `array.array` and handed to torch without a copy: this host work runs serially
        with every replay."""
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

    def _run_full(self, sb: SubBatch, rows: list[list[int]], forward: GraphForward) -> torch.Tensor:
        ids, mask = self._fill_full(sb.batch, sb.seq_len, rows)
        emb = forward(0, self._model, ids, mask)  # (B, H) float32: graph memory on a replay
        return emb[: len(rows)]

    def _fill_packed(
        self, rows: list[list[int]], lengths: tuple[int, ...], T_pad: int
    ) -> PackedLayout:
        layout = PackedLayout.build(
            lengths,
            attention_width=self.encoder.attention_width,
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

    def _forward_packed(
        self, layout: PackedLayout, T_pad: int, forward: GraphForward
    ) -> torch.Tensor:
        """The packed forward over the static buffers, every piece through `forward`."""
        pieces = self._pieces
        hidden, attn, attend = self._hidden, self._attn[:T_pad], self._model.attend_packed
        qkv = forward(0, pieces[0], self._ids[:T_pad], self._pos[:T_pad], hidden[0][:T_pad])
        for i, piece in enumerate(pieces[1:]):
            attend(qkv, layout, attn, i)  # eager, per request, layer i: writes attn[:T]
            qkv = forward(i + 1, piece, hidden[i % 2][:T_pad], attn, hidden[(i + 1) % 2][:T_pad])
        return self._model.pool_packed(qkv, layout)  # (B, D) float32, a fresh tensor

    def _run_packed(
        self, sb: SubBatch, rows: list[list[int]], forward: GraphForward
    ) -> torch.Tensor:
        layout = self._fill_packed(rows, sb.lengths, sb.num_tokens)
        return self._forward_packed(layout, sb.num_tokens, forward)

    def _forward_one(self, row: list[int]) -> torch.Tensor:
        """NONE, one request: the padded forward at the request's own length. With one row
        neither layout pads anything, and this one skips the packed bookkeeping (the layout,
        the attention groups, the copies into static buffers)."""
        ids = int64_tensor(row).to(self.device).view(1, len(row))
        return self._model(ids, torch.ones_like(ids, dtype=torch.bool))  # (1, H) f32

    # ------------------------------------------------------------------ captures

    def _dummy_forward(self, descriptor: BatchDescriptor, forward: GraphForward) -> None:
        """One forward of `descriptor`'s shape with dummy rows of pad ids in the static buffers
        (FULL: full-length rows; packed: one request per max_seq_len tokens)."""
        if self.mode is CUDAGraphMode.FULL:
            B = descriptor.num_reqs
            assert B is not None
            S = descriptor.num_tokens // B
            ids = self._ids[: B * S].view(B, S)
            mask = self._mask[: B * S].view(B, S)
            ids.fill_(self.pad_id)
            mask.fill_(True)
            forward(0, self._model, ids, mask)
            return
        T = descriptor.num_tokens
        full, rest = divmod(T, self.max_seq_len)
        lengths = (self.max_seq_len,) * full + ((rest,) if rest else ())
        layout = self._fill_packed([[self.pad_id] * k for k in lengths], lengths, T)
        self._forward_packed(layout, T, forward)

    @torch.inference_mode()
    def prewarm(
        self, descriptors: Iterable[BatchDescriptor], on_progress: ProgressFn | None = None
    ) -> PrewarmReport:
        """Capture `descriptors` now, largest first (`GraphCache.prewarm`). A descriptor that is
        not a shape of this runner's ladder (PIECEWISE: relaxed to its token count, as lookups
        are) is reported failed. NONE: all skipped."""
        on: list[BatchDescriptor] = []
        off: list[BatchDescriptor] = []
        for d in descriptors:
            (on if self.graphs.key_for(d) in self._ladder_keys else off).append(d)
        report = self.graphs.prewarm(on, self._dummy_forward, on_progress=on_progress)
        if self.mode.has_graphs():
            report.failed.extend(
                (d, f"{d.label()} is not a shape of this runner's ladder") for d in off
            )
        else:
            report.skipped.extend(off)
        return report

    def idle_work_due(self, idle: bool) -> bool:
        """Whether `idle_capture` has work (cheap; any thread). `idle`: no batch is waiting."""
        return self.graphs.idle_work_due(idle)

    @torch.inference_mode()
    def idle_capture(self, idle: bool = True) -> PrewarmProgress | None:
        """Capture one deferred or predicted shape (see `GraphCache.idle_capture`)."""
        return self.graphs.idle_capture(self._dummy_forward, idle)
