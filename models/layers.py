"""The building blocks families share: embeddings, attention, the post-LayerNorm encoder block
with a fused QKV projection, and MPNet's relative position buckets for the BERT-like families
(`attend` and `with_key_mask` serve every family; DeBERTa's block is `EncoderLayer`); and the
grouped-query attention projections and gated feed-forward of the decoders read as embedders
(Qwen3, Gemma3).

Shapes: B requests, S positions, T packed tokens, H hidden size, nh heads, d = H / nh.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.config import (
    MPNET_MAX_DISTANCE,
    MPNET_NUM_BUCKETS,
    DebertaV2Config,
    EncoderConfig,
    Gemma3Config,
    Qwen3Config,
)

# config.json hidden_act -> F.gelu's `approximate` (None: ReLU).
_GELU_APPROX: dict[str, str | None] = {
    "gelu": "none",
    "gelu_new": "tanh",
    "gelu_pytorch_tanh": "tanh",
    "relu": None,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A config.json activation name (`config.HIDDEN_ACTS`) -> the function: GELU, exact or
    tanh-approximated, or ReLU."""
    approximate = _GELU_APPROX[name]
    return F.relu if approximate is None else functools.partial(F.gelu, approximate=approximate)


def heads_of(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    """A fused projection (B, S, 3H) -> q, k, v (B, nh, S, d) each, as views (no copy)."""
    B, S, three_h = qkv.shape
    d = three_h // (3 * num_heads)
    return qkv.view(B, S, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)


def attend(
    qkv: torch.Tensor, num_heads: int, mask: torch.Tensor | None, scale: float | None = None
) -> torch.Tensor:
    """Multi-head self-attention from a fused QKV projection.

    qkv: (B, S, 3H). mask: None (every position real), a bool key mask (B, 1, 1, S) (True = may
    be attended to), or a float bias added to the scores, broadcastable to (B, nh, S, S) (-inf
    where a key is masked). scale: of q.k (None: 1 / sqrt(d)). Returns (B, S, H).
    """
    B, S, three_h = qkv.shape
    q, k, v = heads_of(qkv, num_heads)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, nh, S, d)
    return y.transpose(1, 2).reshape(B, S, three_h // 3)


def token_types(
    table: nn.Embedding | None, stride: int | None, input_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The plain ids and the token type rows to add to their embeddings.

    With `stride`, each id carries its type (id + type * stride, `TextTokenizer.pair_ids`) and is
    split back; without, every token is type 0 (one row, broadcast). No table: no types (None).
    """
    if table is None:
        return input_ids, None
    if stride is None:
        return input_ids, table.weight[0]
    type_ids = torch.div(input_ids, stride, rounding_mode="floor")
    return input_ids - type_ids * stride, table(type_ids)


def with_key_mask(extra: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """A per-position mask and the padding key mask, as one SDPA mask.

    extra: a float bias (1, nh, S, S) -> (B, nh, S, S) with -inf at masked keys; or a bool mask
    (1, 1, S, S) (True = may attend) -> (B, 1, S, S). key_mask: (B, 1, 1, S) bool.
    """
    if extra.dtype == torch.bool:
        return extra & key_mask
    return extra.masked_fill(~key_mask, float("-inf"))


class Embeddings(nn.Module):
    """Word + position + token type embeddings, then LayerNorm (then ELECTRA's or ALBERT's
    projection to the hidden size).

    Positions come in 0-based; the family's offset (`EncoderConfig.position_offset`) is applied
    here by reading the table from that row on, so both layouts and the runner stay 0-based.

    Token types: every token is type 0 (single texts, and every embedding model), unless
    `type_stride` is set (a BERT or ELECTRA cross-encoder): then each id carries its type as
    id + type * type_stride (`TextTokenizer.pair_ids`), split back here.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        E = cfg.embedding_dim
        self.word_embeddings = nn.Embedding(cfg.vocab_size, E)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, E)
        self.token_type_embeddings: nn.Embedding | None = None
        if cfg.token_types:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        # ELECTRA's embeddings_project, where its embeddings are narrower than the blocks;
        # ALBERT's embedding_hidden_mapping_in.
        self.project: nn.Linear | None = None
        if cfg.projects_embeddings:
            self.project = nn.Linear(E, cfg.hidden_size)
        self.position_offset = cfg.position_offset
        self.type_stride: int | None = None

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, position_ids: (...,) int64, positions 0-based -> (..., H).
        table = self.position_embeddings.weight[self.position_offset :]  # a view, no copy
        input_ids, types = token_types(self.token_type_embeddings, self.type_stride, input_ids)
        x = self.word_embeddings(input_ids) + F.embedding(position_ids, table)
        if types is not None:
            x = x + types
        x = self.LayerNorm(x)
        return x if self.project is None else self.project(x)


class EncoderLayer(nn.Module):
    """One post-LayerNorm transformer block, split at attention.

    `qkv` is the fused query/key/value projection (the checkpoint's three matrices stacked), so
    it is one matmul and, in the packed layout, one piece of graph with the previous block.
    DeBERTa's block is the same (its attention differs, not its tensors).
    """

    def __init__(self, cfg: EncoderConfig | DebertaV2Config) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(H, 3 * H)
        self.attn_out = nn.Linear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(H, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.act = activation(cfg.hidden_act)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x, attn (..., H) -> (..., H). Row-wise, no mixing."""
        x = self.attn_norm(x + self.attn_out(attn))
        return self.ffn_norm(x + self.ffn_out(self.act(self.ffn_in(x))))


def relative_position_buckets(length: int) -> torch.Tensor:
    """MPNet's bucket of every (query i, key j) pair: (length, length) int64.

    Hugging Face's `MPNetEncoder.relative_position_bucket` for relative position j - i: half
    the buckets per direction, exact up to 8 apart, logarithmic up to 128, the last bucket beyond.
    """
    pos = torch.arange(length)
    n = pos.view(-1, 1) - pos.view(1, -1)  # (S, S): i - j, i.e. -(j - i)
    half = MPNET_NUM_BUCKETS // 2
    ret = (n < 0).to(torch.int64) * half
    n = n.abs()
    max_exact = half // 2
    scale = (half - max_exact) / math.log(MPNET_MAX_DISTANCE / max_exact)
    # n = 0 gives log(0) = -inf here; torch.where takes the exact branch for it.
    large = max_exact + (torch.log(n.float() / max_exact) * scale).to(torch.int64)
    large = large.clamp(max=half - 1)
    return ret + torch.where(n < max_exact, n, large)


class RelativePositionBias(nn.Module):
    """MPNet's relative position bias: one (num_buckets, nh) table, shared by every layer.

    `forward(S)` -> (1, nh, S, S) in the table's dtype, added to every layer's attention scores.
    The buckets are precomputed for the longest sequence, so no arange or log runs per forward.
    """

    def __init__(self, cfg: EncoderConfig, max_len: int) -> None:
        super().__init__()
        self.relative_attention_bias = nn.Embedding(
            cfg.relative_attention_num_buckets, cfg.num_attention_heads
        )
        self.register_buffer("buckets", relative_position_buckets(max_len), persistent=False)
        self.buckets: torch.Tensor

    def forward(self, length: int) -> torch.Tensor:
        values = self.relative_attention_bias(self.buckets[:length, :length])  # (S, S, nh)
        return values.permute(2, 0, 1).unsqueeze(0)  # (1, nh, S, S)


class GroupedQueryAttention(nn.Module):
    """The projections of grouped-query attention with a norm on each query and key head
    (Qwen3's and Gemma3's, under the checkpoints' names)."""

    def __init__(self, cfg: Qwen3Config | Gemma3Config, norm: type[nn.Module]) -> None:
        super().__init__()
        H, d, bias = cfg.hidden_size, cfg.head_dim, cfg.attention_bias
        self.q_proj = nn.Linear(H, cfg.num_attention_heads * d, bias=bias)
        self.k_proj = nn.Linear(H, cfg.num_key_value_heads * d, bias=bias)
        self.v_proj = nn.Linear(H, cfg.num_key_value_heads * d, bias=bias)
        self.o_proj = nn.Linear(cfg.attention_width, H, bias=bias)
        self.q_norm = norm(d, cfg.rms_norm_eps)
        self.k_norm = norm(d, cfg.rms_norm_eps)
        self.head_dim = d
        self.kv_repeats = cfg.num_attention_heads // cfg.num_key_value_heads

    def qkv(self, h: torch.Tensor) -> torch.Tensor:
        """Normed hidden states (..., H) -> q, k, v of every query head (..., 3A), before
        rotary positions: each key/value head repeated for the query heads it serves."""
        heads = (-1, self.head_dim)
        q = self.q_norm(self.q_proj(h).unflatten(-1, heads))  # (..., nh, d)
        k = self.k_norm(self.k_proj(h).unflatten(-1, heads))  # (..., nkv, d)
        v = self.v_proj(h).unflatten(-1, heads)
        if self.kv_repeats > 1:  # query head i reads key/value head i // repeats
            k = k.repeat_interleave(self.kv_repeats, dim=-2)
            v = v.repeat_interleave(self.kv_repeats, dim=-2)
        return torch.cat((q, k, v), dim=-2).flatten(-2)


class GatedMlp(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU in Qwen3, GeGLU in Gemma3."""

    def __init__(
        self, cfg: Qwen3Config | Gemma3Config, act: Callable[[torch.Tensor], torch.Tensor]
    ):
        super().__init__()
        H, intermediate = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = nn.Linear(H, intermediate, bias=False)
        self.up_proj = nn.Linear(H, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, H, bias=False)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
