"""Qwen3 (Qwen3-Embedding) in plain torch, in both layouts: token embeddings, pre-RMSNorm blocks
with causal grouped-query attention (RMSNorm on each query and key head, rotary positions) and a
SwiGLU feed-forward, a final RMSNorm. The sentence-transformers pipeline pools the last token.

The block splits at attention like the encoders' (`qkv(x)` then `finish(x, attn)`), so the
packed pieces and the runner are the same. `qkv` repeats each key/value head for the query heads
it serves, so attention sees `nh` heads of each of q, k, v (a (..., 3A) projection, A = nh x d,
which need not be the hidden size). Rotary positions and the causal mask are applied in the
attention step (`rotary.RotaryBody`'s forwards, `causal`). Module and parameter names are the
checkpoint's own (transformers' Qwen3Model).

Rotary runs in float32 (`rotary.rotate_qkv`); transformers' Qwen3 rotates in the serving dtype,
so bfloat16 results differ from it by rounding, float32 ones not at all.

Shapes: B requests, S positions, T packed tokens, H hidden, nh query heads, nkv key/value heads,
d head size, A = nh x d, I intermediate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import Qwen3Config
from models.layers import GatedMlp, GroupedQueryAttention
from models.rotary import Rotary, RotaryBody


class RMSNorm(nn.Module):
    """transformers' Qwen3RMSNorm: statistics in float32, the weight applied in the input dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Qwen3Layer(nn.Module):
    """x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(.))."""

    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = GroupedQueryAttention(cfg, RMSNorm)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMlp(cfg, F.silu)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> q, k, v of every query head (..., 3A), before rotary positions."""
        return self.self_attn.qkv(self.input_layernorm(x))

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x (..., H), attn (..., A) -> (..., H). Row-wise."""
        h = x + self.self_attn.o_proj(attn)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3Encoder(RotaryBody):
    """Token embeddings + Qwen3 blocks + final RMSNorm: ids -> last hidden states."""

    causal = True

    def __init__(self, cfg: Qwen3Config) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        blocks = [Qwen3Layer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        self.blocks: list[Qwen3Layer] = blocks  # typed view of the same modules
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (...,) -> (..., H); positions enter through rotary attention, not here."""
        return self.embed_tokens(input_ids)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)
