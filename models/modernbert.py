"""ModernBERT in plain torch, in both layouts: token embeddings + LayerNorm, pre-LayerNorm blocks
with rotary positions and a GeGLU feed-forward, global attention every few layers and local
attention (a window of local_attention // 2 tokens each way) in the others, a final LayerNorm.

Its block splits at attention like the post-LayerNorm families' (`qkv(x)` then `finish(x, attn)`),
so the packed pieces and the runner are the same; rotary positions and the window are applied
in the attention step, which therefore needs the layer index (`attend_packed(..., layer)`; the
forwards are `rotary.RotaryBody`'s). Tensor names are Hugging Face's ModernBertModel names.

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d = H / nh, I intermediate.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import ModernBertConfig
from models.layers import activation
from models.rotary import Rotary, RotaryBody


class ModernBertEmbeddings(nn.Module):
    """Token embeddings + LayerNorm; positions enter through rotary attention, not here."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))  # (..., H)


class _Attention(nn.Module):
    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.Wqkv = nn.Linear(H, 3 * H, bias=cfg.attention_bias)
        self.Wo = nn.Linear(H, H, bias=cfg.attention_bias)


class _Mlp(nn.Module):
    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.Wi = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.Wo = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)


class ModernBertLayer(nn.Module):
    """x + attn(attn_norm(x)), then + mlp(mlp_norm(.)); layer 0 has no attn_norm (the
    embeddings' norm precedes it)."""

    def __init__(self, cfg: ModernBertConfig, index: int) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.attn_norm: nn.LayerNorm | None = None
        if index > 0:
            self.attn_norm = nn.LayerNorm(H, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.attn = _Attention(cfg)
        self.mlp_norm = nn.LayerNorm(H, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.mlp = _Mlp(cfg)
        self.sliding = cfg.layer_types[index] == "sliding_attention"
        self.act = activation(cfg.hidden_activation)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> the QKV projection (..., 3H), before rotary positions."""
        return self.attn.Wqkv(x if self.attn_norm is None else self.attn_norm(x))

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x, attn (..., H) -> (..., H). Row-wise, no mixing."""
        h = x + self.attn.Wo(attn)
        gate_in, gate = self.mlp.Wi(self.mlp_norm(h)).chunk(2, dim=-1)  # (..., I) each
        return h + self.mlp.Wo(self.act(gate_in) * gate)


class ModernBertEncoder(RotaryBody):
    """Embeddings + ModernBERT blocks + final LayerNorm: ids -> last hidden states."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = ModernBertEmbeddings(cfg)
        blocks = [ModernBertLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        self.blocks: list[ModernBertLayer] = blocks  # typed view of the same modules
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.rotary = Rotary(cfg.head_dim, cfg.global_rope_theta)
        self.local_rotary = Rotary(cfg.head_dim, cfg.local_rope_theta)
        self.window_reach = cfg.sliding_window + 1  # a local layer sees sliding_window each way
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.embeddings(input_ids)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_norm(x)
