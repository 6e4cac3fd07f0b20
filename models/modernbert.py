"""ModernBERT in plain torch, in both layouts: token embeddings + LayerNorm, pre-LayerNorm blocks
with rotary positions and a GeGLU feed-forward, global attention every few layers and local
attention (a window of local_attention // 2 tokens each way) in the others, a final LayerNorm.

Its block splits at attention like the post-LayerNorm families' (`qkv(x)` then `finish(x, attn)`),
so the packed pieces and the runner are the same; rotary positions and the window are applied
in the attention step, which therefore needs the layer index (`attend_packed(..., layer)`).
Tensor names are Hugging Face's ModernBertModel names.

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d = H / nh, I intermediate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModernBertConfig
from models.layers import attend, with_key_mask
from models.packed import PackedLayout, PackedPiece, attend_groups, encoder_pieces
from models.rotary import Rotary, rotate_qkv

_GELU_APPROX = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


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
        self.num_heads = cfg.num_attention_heads
        self.sliding = cfg.layer_types[index] == "sliding_attention"
        self.gelu_approximate = _GELU_APPROX[cfg.hidden_activation]

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> the QKV projection (..., 3H), before rotary positions."""
        return self.attn.Wqkv(x if self.attn_norm is None else self.attn_norm(x))

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x, attn (..., H) -> (..., H). Row-wise, no mixing."""
        h = x + self.attn.Wo(attn)
        gate_in, gate = self.mlp.Wi(self.mlp_norm(h)).chunk(2, dim=-1)  # (..., I) each
        return h + self.mlp.Wo(F.gelu(gate_in, approximate=self.gelu_approximate) * gate)


class ModernBertEncoder(nn.Module):
    """Embeddings + ModernBERT blocks + final LayerNorm: ids -> last hidden states."""

    def __init__(self, cfg: ModernBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = ModernBertEmbeddings(cfg)
        blocks = [ModernBertLayer(cfg, i) for i in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        self.blocks: list[ModernBertLayer] = blocks  # typed view of the same modules
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.global_rotary = Rotary(cfg.head_dim, cfg.global_rope_theta)
        self.local_rotary = Rotary(cfg.head_dim, cfg.local_rope_theta)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    def rotary(self, positions: torch.Tensor, sliding: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (S,) int64 -> cos, sin (S, d) float32."""
        return (self.local_rotary if sliding else self.global_rotary)(positions)

    def window(self, length: int) -> torch.Tensor:
        """(1, 1, S, S) bool: True where two positions are at most the sliding window apart."""
        pos = self.position_ids[:length]
        near = (pos.view(-1, 1) - pos.view(1, -1)).abs() <= self.config.sliding_window
        return near.view(1, 1, length, length)

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embeddings(input_ids)  # (B, S, H)
        pos = self.position_ids[:S]
        rope = {sliding: self.rotary(pos, sliding) for sliding in (False, True)}
        key_mask = attention_mask.view(B, 1, 1, S)
        local = with_key_mask(self.window(S), key_mask)  # (B, 1, S, S)
        for layer in self.blocks:
            cos, sin = rope[layer.sliding]
            qkv = rotate_qkv(layer.qkv(x), cos, sin, layer.num_heads)  # (B, S, 3H)
            attn = attend(qkv, layer.num_heads, local if layer.sliding else key_mask)
            x = layer.finish(x, attn)
        return self.final_norm(x)

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`; the last piece ends with the final norm."""
        return encoder_pieces(self.embeddings, self.blocks, self.final_norm)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer`: rotary at each token's position, then attention
        per group, windowed in local layers: qkv (T_pad, 3H) -> writes out[:T] (T, H)."""
        block = self.blocks[layer]
        T = layout.num_tokens
        cos, sin = self.rotary(layout.positions, block.sliding)  # (T, d)
        rotated = rotate_qkv(qkv[:T], cos, sin, block.num_heads)  # (T, 3H)
        extra = (lambda g: self.window(g.shape[1])) if block.sliding else None
        attend_groups(rotated, layout, out, block.num_heads, extra)
