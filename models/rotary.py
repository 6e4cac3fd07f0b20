"""Rotary position embeddings (RoPE) on a fused QKV projection, as Hugging Face computes them:
angles in float32, the rotate-half layout (not interleaved), for every rotary family; and the
forwards (both layouts) the rotary encoders share: `RotaryBody`, every layer the same rotary
positions and a key mask only (NomicBERT, GTE); `LocalGlobalBody`, global layers and windowed
local ones, each kind with its own rotary base, then a final norm (ModernBERT, Gemma3).

Shapes: B requests, S positions, T packed tokens, nh heads, d head size, H = nh * d.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models.layers import attend, with_key_mask
from models.packed import Block, PackedLayout, PackedPiece, attend_groups, encoder_pieces


class Rotary(nn.Module):
    """The angles of one rotary base: `forward(positions (S,) int64)` -> cos, sin (S, d) float32.
    `scale` divides every frequency (GTE's NTK scaling; 1: none)."""

    def __init__(self, dim: int, theta: float, scale: float = 1.0) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        if scale != 1.0:
            inv = inv / scale
        self.register_buffer("inv_freq", inv, persistent=False)  # (d / 2,) float32
        self.inv_freq: torch.Tensor

    def _apply(self, fn, recurse=True):
        # `.to(dtype)` casts every float buffer: the frequencies go back to float32, as Hugging
        # Face computes the angles (bfloat16 would misplace long positions).
        super()._apply(fn, recurse)
        self.inv_freq = self.inv_freq.float()
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float().view(-1, 1) * self.inv_freq.view(1, -1)  # (S, d / 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """Rotary positions on the q and k parts of a fused projection, in float32 as Hugging Face
    computes them: qkv (..., S, 3H), cos/sin (S, d) -> a new (..., S, 3H) tensor."""
    shape = qkv.shape
    parts = qkv.view(*shape[:-1], 3, num_heads, -1)  # (..., S, 3, nh, d)
    c = cos.to(qkv.dtype).view(cos.shape[0], 1, 1, -1)  # (S, 1, 1, d)
    s = sin.to(qkv.dtype).view(sin.shape[0], 1, 1, -1)
    qk = parts[..., :2, :, :].float()  # (..., S, 2, nh, d)
    rotated = (qk * c + rotate_half(qk) * s).to(qkv.dtype)
    return torch.cat((rotated, parts[..., 2:, :, :]), dim=-3).view(shape)


class RotaryBody(nn.Module):
    """Both layouts' forwards of an encoder whose layers all take rotary positions of one base
    and a key mask only, with no final norm (NomicBERT, GTE). A subclass sets `config`,
    `blocks`, `rotary` and `position_ids` and defines `embed(input_ids, position_ids=None)`."""

    config: Any
    blocks: list[Any]  # `packed.Block`s that are modules with `num_heads`
    rotary: Rotary
    position_ids: torch.Tensor

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embed(input_ids)  # (B, S, H)
        cos, sin = self.rotary(self.position_ids[:S])
        key_mask = attention_mask.view(B, 1, 1, S)
        heads = self.config.num_attention_heads
        for layer in self.blocks:
            qkv = rotate_qkv(layer.qkv(x), cos, sin, heads)  # (B, S, 3H)
            x = layer.finish(x, attend(qkv, heads, key_mask))
        return x

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`."""
        blocks: list[Block] = self.blocks
        return encoder_pieces(self.embed, blocks)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer` (the same for every layer): rotary at each token's
        position, then attention per group: qkv (T_pad, 3H) -> writes out[:T] (T, H)."""
        T = layout.num_tokens
        cos, sin = self.rotary(layout.positions)  # (T, d)
        heads = self.config.num_attention_heads
        attend_groups(rotate_qkv(qkv[:T], cos, sin, heads), layout, out, heads)


class LocalGlobalBody(nn.Module):
    """Both layouts' forwards of an encoder of global layers and local ones that see only the
    tokens less than `window_reach` away, each kind with its own rotary base, then a final norm
    (ModernBERT, Gemma3). A subclass sets `config`, `blocks` (each with `sliding`),
    `global_rotary`, `local_rotary`, `position_ids`, `window_reach` and `scale` (of q.k; None:
    1 / sqrt(d)) and defines `embed(input_ids, position_ids=None)` and `final(x)`."""

    config: Any
    blocks: list[Any]  # `packed.Block`s that are modules with `sliding`
    global_rotary: Rotary
    local_rotary: Rotary
    position_ids: torch.Tensor
    window_reach: int
    scale: float | None

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def final(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def rotary(self, positions: torch.Tensor, sliding: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (S,) int64 -> cos, sin (S, d) float32."""
        return (self.local_rotary if sliding else self.global_rotary)(positions)

    def window(self, length: int) -> torch.Tensor:
        """(1, 1, S, S) bool: True where two positions are less than `window_reach` apart."""
        pos = self.position_ids[:length]
        near = (pos.view(-1, 1) - pos.view(1, -1)).abs() < self.window_reach
        return near.view(1, 1, length, length)

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embed(input_ids)  # (B, S, H)
        pos = self.position_ids[:S]
        rope = {sliding: self.rotary(pos, sliding) for sliding in (False, True)}
        key_mask = attention_mask.view(B, 1, 1, S)
        local = with_key_mask(self.window(S), key_mask)  # (B, 1, S, S)
        heads = self.config.num_attention_heads
        for layer in self.blocks:
            cos, sin = rope[layer.sliding]
            qkv = rotate_qkv(layer.qkv(x), cos, sin, heads)  # (B, S, 3A)
            attn = attend(qkv, heads, local if layer.sliding else key_mask, self.scale)
            x = layer.finish(x, attn)
        return self.final(x)

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`; the last piece ends with the final norm."""
        blocks: list[Block] = self.blocks
        return encoder_pieces(self.embed, blocks, self.final)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer`: rotary at each token's position, then attention per
        group, windowed in local layers: qkv (T_pad, 3A) -> writes out[:T] (T, A)."""
        block = self.blocks[layer]
        T = layout.num_tokens
        heads = self.config.num_attention_heads
        cos, sin = self.rotary(layout.positions, block.sliding)  # (T, d)
        rotated = rotate_qkv(qkv[:T], cos, sin, heads)  # (T, 3A)
        extra = (lambda g: self.window(g.shape[1])) if block.sliding else None
        attend_groups(rotated, layout, out, heads, extra, self.scale)
