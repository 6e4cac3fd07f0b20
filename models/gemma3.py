"""Gemma3 as EmbeddingGemma uses it, in plain torch, in both layouts: token embeddings scaled by
sqrt(hidden_size), blocks with RMSNorm before and after both attention and the GeGLU
feed-forward, bidirectional grouped-query attention (a norm on each query and key head, rotary
positions; `layers.GroupedQueryAttention`, as Qwen3's) in global layers and in local layers that
see only nearby tokens, a final RMSNorm.

The block splits at attention like the others (`qkv(x)` then `finish(x, attn)`), so the packed
pieces and the runner are the same; rotary positions (a base per layer type) and the local
window are applied in the attention step, which therefore needs the layer index (the forwards
are `rotary.RotaryBody`'s). Module and parameter names are the checkpoint's own
(transformers' Gemma3TextModel).

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d head size, A = nh x d.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import Gemma3Config
from models.layers import GatedMlp, GroupedQueryAttention, activation
from models.rotary import Rotary, RotaryBody


class GemmaRMSNorm(nn.Module):
    """transformers' Gemma3RMSNorm: x / rms(x) * (1 + weight), all in float32, then cast back."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (h * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Layer(nn.Module):
    """x + post_attn_norm(attn(input_norm(x))), then + post_ff_norm(mlp(pre_ff_norm(.)))."""

    def __init__(self, cfg: Gemma3Config, index: int) -> None:
        super().__init__()
        H, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(H, eps)
        self.self_attn = GroupedQueryAttention(cfg, GemmaRMSNorm)
        self.post_attention_layernorm = GemmaRMSNorm(H, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(H, eps)
        self.mlp = GatedMlp(cfg, activation(cfg.hidden_activation))
        self.post_feedforward_layernorm = GemmaRMSNorm(H, eps)
        self.sliding = cfg.layer_types[index] == "sliding_attention"

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> q, k, v of every query head (..., 3A), before rotary positions."""
        return self.self_attn.qkv(self.input_layernorm(x))

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x (..., H), attn (..., A) -> (..., H). Row-wise."""
        h = x + self.post_attention_layernorm(self.self_attn.o_proj(attn))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma3Encoder(RotaryBody):
    """Scaled token embeddings + Gemma3 blocks + final RMSNorm: ids -> last hidden states."""

    def __init__(self, cfg: Gemma3Config) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        # Cast with the weights to the serving dtype, as transformers rounds it (bfloat16: 27.75
        # for sqrt(768)).
        self.register_buffer("embed_scale", torch.tensor(cfg.hidden_size**0.5), persistent=False)
        self.embed_scale: torch.Tensor
        blocks = [Gemma3Layer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        self.blocks: list[Gemma3Layer] = blocks  # typed view of the same modules
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.global_rope_theta)
        self.local_rotary = Rotary(cfg.head_dim, cfg.local_rope_theta)
        self.scale = cfg.query_pre_attn_scalar**-0.5
        self.window_reach = cfg.window
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (...,) -> (..., H); positions enter through rotary attention, not here."""
        return self.embed_tokens(input_ids) * self.embed_scale

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)
