"""GTE (gte-multilingual-base, gte-*-en-v1.5, gte-multilingual-reranker-base) in plain torch, in
both layouts: word (+ token type) embeddings and LayerNorm, then BERT's post-LayerNorm blocks
with rotary positions on every dimension, biased attention projections and a gated feed-forward
(GLU: the activation on the gate half), no final norm.

The block splits at attention like the others (`qkv(x)` then `finish(x, attn)`); the forwards
are `rotary.RotaryBody`'s. Module and parameter names are the checkpoint's own, which
transformers' GteModel also saves (the original code's: a fused `qkv_proj`, `up_gate_proj`).

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d = H / nh, I intermediate.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import GteConfig
from models.layers import activation, token_types
from models.rotary import Rotary, RotaryBody


class GteEmbeddings(nn.Module):
    """Word (+ token type, where the model has them) embeddings; positions are rotary."""

    def __init__(self, cfg: GteConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings: nn.Embedding | None = None
        if cfg.token_types:
            self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, cfg: GteConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.qkv_proj = nn.Linear(H, 3 * H)
        self.o_proj = nn.Linear(H, H)


class _Mlp(nn.Module):
    """down(act(gate) * up), `up_gate_proj` holding the up half first."""

    def __init__(self, cfg: GteConfig) -> None:
        super().__init__()
        self.up_gate_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)


class GteLayer(nn.Module):
    """attn_ln(x + attn(x)), then mlp_ln(. + mlp(.))."""

    def __init__(self, cfg: GteConfig) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.attn_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _Mlp(cfg)
        self.mlp_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.act = activation(cfg.hidden_act)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> the QKV projection (..., 3H), before rotary positions."""
        return self.attention.qkv_proj(x)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x, attn (..., H) -> (..., H). Row-wise, no mixing."""
        h = self.attn_ln(x + self.attention.o_proj(attn))
        up, gate = self.mlp.up_gate_proj(h).chunk(2, dim=-1)  # (..., I) each
        return self.mlp_ln(h + self.mlp.down_proj(self.act(gate) * up))


class _Layers(nn.Module):
    def __init__(self, blocks: list[GteLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(blocks)


class GteEncoder(RotaryBody):
    """Embeddings + GTE blocks: ids -> last hidden states."""

    def __init__(self, cfg: GteConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = GteEmbeddings(cfg)
        blocks = [GteLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.encoder = _Layers(blocks)  # encoder.layer.{i}: the checkpoint's names
        self.blocks: list[GteLayer] = blocks  # typed view of the same modules
        # The original code's fixed NTK scaling: the base times the factor, and every frequency
        # divided by factor ** (2 / d) (as vLLM's NTKScalingRotaryEmbedding computes it too).
        d, factor = cfg.head_dim, cfg.ntk_factor
        self.rotary = Rotary(d, cfg.rope_theta * factor, factor ** (2 / d))
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (...,) -> (..., H); positions enter through rotary attention, not here."""
        emb = self.embeddings
        input_ids, types = token_types(emb.token_type_embeddings, None, input_ids)
        x = emb.word_embeddings(input_ids)
        return emb.LayerNorm(x if types is None else x + types)
