"""Qwen3 (Qwen3-Embedding) in plain torch, in both layouts: token embeddings, pre-RMSNorm blocks
with causal grouped-query attention (RMSNorm on each query and key head, rotary positions) and a
SwiGLU feed-forward, a final RMSNorm. The sentence-transformers pipeline pools the last token.

The block splits at attention like the encoders' (`qkv(x)` then `finish(x, attn)`), so the
packed pieces and the runner are the same. `qkv` repeats each key/value head for the query heads
it serves, so attention sees `nh` heads of each of q, k, v (a (..., 3A) projection, A = nh x d,
which need not be the hidden size). Rotary positions and the causal mask are applied in the
attention step. Module and parameter names are the checkpoint's own (transformers' Qwen3Model).

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
from models.layers import GatedMlp, GroupedQueryAttention, attend, with_key_mask
from models.packed import PackedLayout, PackedPiece, attend_groups, encoder_pieces
from models.rotary import Rotary, rotate_qkv


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


def causal(length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, S, S) bool: True where the key is not after the query."""
    return (
        torch.ones((length, length), dtype=torch.bool, device=device)
        .tril()
        .view(1, 1, length, length)
    )


class Qwen3Encoder(nn.Module):
    """Token embeddings + Qwen3 blocks + final RMSNorm: ids -> last hidden states."""

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

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real, padding on the
        right) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embed(input_ids)  # (B, S, H)
        cos, sin = self.rotary(self.position_ids[:S])
        mask = with_key_mask(causal(S, x.device), attention_mask.view(B, 1, 1, S))
        heads = self.config.num_attention_heads
        for layer in self.blocks:
            qkv = rotate_qkv(layer.qkv(x), cos, sin, heads)  # (B, S, 3A)
            x = layer.finish(x, attend(qkv, heads, mask))
        return self.norm(x)

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`; the last piece ends with the final norm."""
        return encoder_pieces(self.embed, self.blocks, self.norm)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager causal attention of layer `layer`: rotary at each token's position, then
        attention per group: qkv (T_pad, 3A) -> writes out[:T] (T, A)."""
        T = layout.num_tokens
        cos, sin = self.rotary(layout.positions)  # (T, d)
        heads = self.config.num_attention_heads
        rotated = rotate_qkv(qkv[:T], cos, sin, heads)
        attend_groups(rotated, layout, out, heads, lambda g: causal(g.shape[1], g.device))
