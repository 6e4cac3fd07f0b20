"""DeBERTa-v2 and v3 in plain torch, in both layouts: BERT's post-LayerNorm block (`EncoderLayer`,
QKV fused) with disentangled attention.

Each layer's attention scores add to q.k two position scores read from a table of relative
position embeddings: content-to-position (c2p: the query against the key's relative position)
and position-to-content (p2c: the key against the query's), every score scaled by
1 / sqrt(d * (1 + the number of position score types)). Relative distances beyond
position_buckets // 2 are log-bucketed. The position scores depend on q and k, so they are
computed per layer as an additive attention bias, from only the table rows a length reaches.
Tensor names follow Hugging Face's DebertaV2Model (`weights.deberta_checkpoint_names`).

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d = H / nh, R table rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import DebertaV2Config
from models.layers import EncoderLayer, attend, heads_of, token_types, with_key_mask
from models.packed import PackedLayout, PackedPiece, attend_groups, encoder_pieces


class DebertaEmbeddings(nn.Module):
    """Word (+ absolute position, where position_biased_input) (+ token type, where the model has
    types) embeddings, projected up to the hidden size where narrower, then LayerNorm.

    Token types as `layers.Embeddings`: type 0 everywhere unless `type_stride` is set.
    """

    def __init__(self, cfg: DebertaV2Config) -> None:
        super().__init__()
        E = cfg.embedding_dim
        self.word_embeddings = nn.Embedding(cfg.vocab_size, E)
        self.position_embeddings: nn.Embedding | None = None
        if cfg.position_biased_input:
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, E)
        self.token_type_embeddings: nn.Embedding | None = None
        if cfg.token_types:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, E)
        self.embed_proj: nn.Linear | None = None
        if E != cfg.hidden_size:
            self.embed_proj = nn.Linear(E, cfg.hidden_size, bias=False)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.type_stride: int | None = None

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, position_ids: (...,) int64, positions 0-based -> (..., H).
        input_ids, types = token_types(self.token_type_embeddings, self.type_stride, input_ids)
        x = self.word_embeddings(input_ids)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        if types is not None:
            x = x + types
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        return self.LayerNorm(x)


class DisentangledLayer(EncoderLayer):
    """`EncoderLayer` with the projections of the relative embeddings: its own key and query
    projections where share_att_key (DeBERTa-v3), else pos_key_proj (c2p) and pos_query_proj
    (p2c)."""

    def __init__(self, cfg: DebertaV2Config) -> None:
        super().__init__(cfg)
        H = cfg.hidden_size
        self.c2p = "c2p" in cfg.pos_att_type
        self.p2c = "p2c" in cfg.pos_att_type
        self.pos_key_proj: nn.Linear | None = None
        self.pos_query_proj: nn.Linear | None = None
        if cfg.relative_attention and not cfg.share_att_key:
            self.pos_key_proj = nn.Linear(H, H) if self.c2p else None
            self.pos_query_proj = nn.Linear(H, H) if self.p2c else None

    def positions(self, rel: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Relative embeddings (R, H) -> their query and key projections (nh, R, d) each (None
        where that score type is off)."""
        H = rel.shape[-1]
        w, b = self.qkv.weight, self.qkv.bias
        pos_q = pos_k = None
        if self.p2c:
            proj = self.pos_query_proj
            pos_q = F.linear(rel, w[:H], b[:H]) if proj is None else proj(rel)
        if self.c2p:
            proj = self.pos_key_proj
            pos_k = F.linear(rel, w[H : 2 * H], b[H : 2 * H]) if proj is None else proj(rel)
        nh = self.num_heads

        def by_head(p: torch.Tensor | None) -> torch.Tensor | None:
            return None if p is None else p.view(-1, nh, H // nh).transpose(0, 1)

        return by_head(pos_q), by_head(pos_k)


def relative_index(length: int, cfg: DebertaV2Config) -> torch.Tensor:
    """(length, length) int64: the row of the relative embedding table that query i and key j
    read, Hugging Face's clamp(bucket(i - j) + span, 0, 2 * span - 1) (`make_log_bucket_position`
    with its float32 arithmetic: exact up to position_buckets // 2 apart, logarithmic beyond)."""
    pos = torch.arange(length)
    rel = pos.view(-1, 1) - pos.view(1, -1)  # i - j
    span = cfg.attention_span
    if cfg.position_buckets > 0:
        mid = cfg.position_buckets // 2
        sign = torch.sign(rel)
        near = (rel < mid) & (rel > -mid)
        abs_pos = torch.where(near, torch.tensor(mid - 1), rel.abs())
        denominator = torch.log(torch.tensor((cfg.max_relative_distance - 1) / mid))
        log_pos = torch.ceil(torch.log(abs_pos / mid) / denominator * (mid - 1)) + mid
        rel = torch.where(abs_pos <= mid, rel.to(log_pos.dtype), log_pos * sign).to(torch.int64)
    return torch.clamp(rel + span, 0, 2 * span - 1)


class DebertaEncoder(nn.Module):
    """Embeddings + disentangled-attention blocks: ids -> last hidden states. The relative
    embeddings (and their LayerNorm) are shared by every layer."""

    def __init__(self, cfg: DebertaV2Config) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = DebertaEmbeddings(cfg)
        blocks = [DisentangledLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        self.blocks: list[DisentangledLayer] = blocks  # typed view of the same modules
        self.rel_embeddings: nn.Embedding | None = None
        self.rel_norm: nn.LayerNorm | None = None
        if cfg.relative_attention:
            self.rel_embeddings = nn.Embedding(2 * cfg.attention_span, cfg.hidden_size)
            if cfg.rel_norm:
                self.rel_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.scale = cfg.attention_scale
        P = cfg.max_positions
        self.register_buffer("position_ids", torch.arange(P), persistent=False)
        self.position_ids: torch.Tensor
        index = relative_index(P, cfg) if cfg.disentangled else torch.zeros((1, 1))
        self.register_buffer("rel_index", index, persistent=False)
        self.rel_index: torch.Tensor
        # The table rows a length S reaches: [first[S - 1], last[S - 1]] (plain ints, so no
        # device sync and a static shape per S).
        self._first_row = index[0].tolist()
        self._last_row = index[:, 0].tolist()

    def position_scores(self, layer: DisentangledLayer, qkv: torch.Tensor) -> torch.Tensor:
        """c2p + p2c of `layer` for a padded QKV (B, S, 3H) -> (B, nh, S, S), already scaled."""
        assert self.rel_embeddings is not None
        B, S, _ = qkv.shape
        lo, hi = self._first_row[S - 1], self._last_row[S - 1] + 1
        rel = self.rel_embeddings.weight[lo:hi]  # (R, H): the rows these distances read
        if self.rel_norm is not None:
            rel = self.rel_norm(rel)
        pos_q, pos_k = layer.positions(rel)
        q, k, _ = heads_of(qkv, layer.num_heads)  # (B, nh, S, d)
        index = (self.rel_index[:S, :S] - lo).expand(B, layer.num_heads, S, S)
        scores = torch.zeros((), dtype=qkv.dtype, device=qkv.device)
        if pos_k is not None:  # c2p[i, j] = q_i . pos_k[row(i, j)]
            scores = scores + torch.gather(q @ pos_k.transpose(-1, -2), -1, index)
        if pos_q is not None:  # p2c[i, j] = k_j . pos_q[row(i, j)]
            by_key = torch.gather(k @ pos_q.transpose(-1, -2), -1, index.transpose(-1, -2))
            scores = scores + by_key.transpose(-1, -2)
        return scores * self.scale

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embeddings(input_ids, self.position_ids[:S])  # (B, S, H)
        key_mask = attention_mask.view(B, 1, 1, S)
        for layer in self.blocks:
            qkv = layer.qkv(x)
            mask = key_mask
            if self.config.disentangled:
                mask = with_key_mask(self.position_scores(layer, qkv), key_mask)
            x = layer.finish(x, attend(qkv, layer.num_heads, mask, self.scale))
        return x

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`."""
        return encoder_pieces(self.embeddings, self.blocks)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer`, per group with the group's position scores:
        qkv (T_pad, 3H) -> writes out[:T] (T, H)."""
        block = self.blocks[layer]
        extra = None
        if self.config.disentangled:
            extra = lambda g: self.position_scores(block, g)  # noqa: E731
        attend_groups(qkv, layout, out, block.num_heads, extra, self.scale)
