"""Rotary position embeddings (RoPE) on a fused QKV projection, as Hugging Face computes them:
angles in float32, the rotate-half layout (not interleaved). ModernBERT and NomicBERT use them.

Shapes: S positions, nh heads, d head size, H = nh * d.
"""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """The angles of one rotary base: `forward(positions (S,) int64)` -> cos, sin (S, d) float32."""

    def __init__(self, dim: int, theta: float) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
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
