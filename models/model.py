"""`SentenceModel`: a family's encoder body (`TransformerEncoder`, `DebertaEncoder`,
`ModernBertEncoder`, `NomicBertEncoder`, `GteEncoder`, `Qwen3Encoder` or `Gemma3Encoder`)
followed by its sentence-transformers pipeline or its classification head
(`heads.ClassificationHead`, for rerankers and classifiers: rows of logits), with the interface
the runner drives in every graph mode.

- FULL and single requests: `model(input_ids (B, S), attention_mask (B, S))` -> (B, D) float32,
  the encoder, pooling, Dense and Normalize with static shapes: one CUDA graph covers them all.
- PIECEWISE and NONE: `packed_pieces()` (graphable), `attend_packed(qkv, layout, out, layer)`
  (eager, between the pieces), then `pool_packed(hidden, layout)` (eager) on the last hidden
  state.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import (
    BodyConfig,
    DebertaV2Config,
    EncoderConfig,
    Gemma3Config,
    GteConfig,
    NomicBertConfig,
    Qwen3Config,
)
from models.deberta import DebertaEncoder
from models.gemma3 import Gemma3Encoder
from models.gte import GteEncoder
from models.heads import ClassificationHead
from models.modernbert import ModernBertEncoder
from models.nomicbert import NomicBertEncoder
from models.packed import PackedLayout, PackedPiece
from models.pipeline import SentencePipeline
from models.qwen3 import Qwen3Encoder
from models.transformer import TransformerEncoder

EncoderBody = (
    TransformerEncoder
    | DebertaEncoder
    | ModernBertEncoder
    | NomicBertEncoder
    | GteEncoder
    | Qwen3Encoder
    | Gemma3Encoder
)


def build_body(cfg: BodyConfig) -> EncoderBody:
    """The encoder body of `cfg`'s family, with untrained weights."""
    if isinstance(cfg, EncoderConfig):
        return TransformerEncoder(cfg)
    if isinstance(cfg, DebertaV2Config):
        return DebertaEncoder(cfg)
    if isinstance(cfg, NomicBertConfig):
        return NomicBertEncoder(cfg)
    if isinstance(cfg, GteConfig):
        return GteEncoder(cfg)
    if isinstance(cfg, Qwen3Config):
        return Qwen3Encoder(cfg)
    if isinstance(cfg, Gemma3Config):
        return Gemma3Encoder(cfg)
    return ModernBertEncoder(cfg)


class SentenceModel(nn.Module):
    """Encoder body + sentence pipeline (or head): token ids -> rows (B, D) float32, sentence
    embeddings (or logits, D = number of labels)."""

    def __init__(
        self,
        encoder: EncoderBody,
        pipeline: SentencePipeline | ClassificationHead,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pipeline = pipeline

    @property
    def config(self) -> BodyConfig:
        return self.encoder.config

    @property
    def dimensions(self) -> int:
        return self.pipeline.dimensions

    def to_serving(self, device: torch.device, dtype: torch.dtype) -> SentenceModel:
        """On `device`, the encoder in `dtype`, the pipeline in float32, eval, no grad."""
        self.encoder.to(device=device, dtype=dtype)
        self.pipeline.to(device=device, dtype=torch.float32)
        return self.eval().requires_grad_(False)

    # ---------------------------------------------------------------- padded layout (FULL)
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool/int (1 = real) -> (B, D) float32.

        Padding rows need at least one real position (see `TransformerEncoder.hidden_states`).
        """
        mask = attention_mask.bool()
        return self.pipeline(self.encoder.hidden_states(input_ids, mask), mask)

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        return self.encoder.packed_pieces()

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer` (0-based): qkv (T_pad, 3A) -> writes out[:T] (T, A),
        A = `config.attention_width`."""
        self.encoder.attend_packed(qkv, layout, out, layer)

    def pool_packed(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """The last piece's hidden state (T_pad, H) -> sentence embeddings (B, D) float32."""
        return self.pipeline.pool_packed(hidden, layout)

    def forward_packed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Eager packed forward: input_ids, 0-based position_ids (T,) -> (B, D) float32.

        The reference composition of the pieces; the runner does the same with static buffers.
        """
        T, H, A = input_ids.shape[0], self.config.hidden_size, self.config.attention_width
        dtype = next(self.encoder.parameters()).dtype
        bufs = [input_ids.new_empty((T, H), dtype=dtype), input_ids.new_empty((T, H), dtype=dtype)]
        attn = input_ids.new_empty((T, A), dtype=dtype)
        pieces = self.packed_pieces()
        qkv = pieces[0](input_ids, position_ids, bufs[0])
        for i, piece in enumerate(pieces[1:]):
            self.attend_packed(qkv, layout, attn, i)
            qkv = piece(bufs[i % 2], attn, bufs[(i + 1) % 2])
        return self.pool_packed(qkv, layout)  # qkv: the last piece's hidden state (T, H)
