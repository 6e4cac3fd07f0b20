"""Rotary position embeddings (RoPE) on a fused QKV projection, as Hugging Face computes them:
angles in float32, the rotate-half layout (not interleaved); and `RotaryBody`, the forwards in
both layouts every rotary family shares (NomicBERT, GTE, ModernBERT, Gemma3, Qwen3).

Shapes: B requests, S positions, T packed tokens, nh heads, d head size, A = nh * d.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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


def causal_mask(length: int, device: torch.device) -> torch.Tensor:
    """(1, 1, S, S) bool: True where the key is not after the query."""
    ones = torch.ones((length, length), dtype=torch.bool, device=device)
    return ones.tril().view(1, 1, length, length)


class RotaryBody(nn.Module, ABC):
    """Both layouts' forwards of the rotary families: every layer takes rotary positions;
    global layers attend over the whole sequence (only to earlier tokens where `causal`: Qwen3),
    local ones (ModernBERT's and Gemma3's `sliding` blocks) with their own rotary base and only
    to the tokens less than `window_reach` away; `final` ends the stack (a final norm, where the
    family has one).

    A subclass sets `config`, `blocks`, `rotary` (the global layers', every layer's where there
    are no local ones) and `position_ids`, and defines `embed`; where it differs from the
    defaults it sets `local_rotary` and `window_reach`, `scale` (of q.k; None: 1 / sqrt(d)),
    `causal`, and overrides `final`.
    """

    config: Any
    blocks: list[Any]  # `packed.Block`s; with local layers, each has `sliding`
    rotary: Rotary
    position_ids: torch.Tensor
    window_reach = 0
    scale: float | None = None
    causal = False

    def __init__(self) -> None:
        super().__init__()
        # An instance attribute: a module assigned later is looked up past a class attribute.
        self.local_rotary: Rotary | None = None

    @abstractmethod
    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (...,) -> (..., H); positions enter through rotary attention."""

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def _local(self, block: Any) -> bool:
        return self.local_rotary is not None and block.sliding

    def _angles(self, positions: torch.Tensor, local: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (S,) int64 -> cos, sin (S, d) float32 of the global or the local base."""
        if local:
            assert self.local_rotary is not None
            return self.local_rotary(positions)
        return self.rotary(positions)

    def window(self, length: int) -> torch.Tensor:
        """(1, 1, S, S) bool: True where two positions are less than `window_reach` apart."""
        pos = self.position_ids[:length]
        near = (pos.view(-1, 1) - pos.view(1, -1)).abs() < self.window_reach
        return near.view(1, 1, length, length)

    def _extra_mask(self, local: bool, length: int, device: torch.device) -> torch.Tensor | None:
        """What a layer's attention masks beyond padding, for sequences of `length`."""
        if local:
            return self.window(length)
        return causal_mask(length, device) if self.causal else None

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real, padding on the
        right) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embed(input_ids)  # (B, S, H)
        pos = self.position_ids[:S]
        key_mask = attention_mask.view(B, 1, 1, S)
        kinds = (False, True) if self.local_rotary is not None else (False,)
        rope = {local: self._angles(pos, local) for local in kinds}
        masks = {}
        for local in kinds:
            extra = self._extra_mask(local, S, x.device)
            masks[local] = key_mask if extra is None else with_key_mask(extra, key_mask)
        heads = self.config.num_attention_heads
        for layer in self.blocks:
            local = self._local(layer)
            cos, sin = rope[local]
            qkv = rotate_qkv(layer.qkv(x), cos, sin, heads)  # (B, S, 3A)
            x = layer.finish(x, attend(qkv, heads, masks[local], self.scale))
        return self.final(x)

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`; the last piece ends with `final`."""
        blocks: list[Block] = self.blocks
        return encoder_pieces(self.embed, blocks, self.final)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer`: rotary at each token's position, then attention per
        group with the layer's mask: qkv (T_pad, 3A) -> writes out[:T] (T, A)."""
        local = self._local(self.blocks[layer])
        T = layout.num_tokens
        heads = self.config.num_attention_heads
        cos, sin = self._angles(layout.positions, local)  # (T, d)
        rotated = rotate_qkv(qkv[:T], cos, sin, heads)  # (T, 3A)
        extra = None
        if local or self.causal:
            extra = lambda g: self._extra_mask(local, g.shape[1], g.device)  # noqa: E731
        attend_groups(rotated, layout, out, heads, extra, self.scale)
