"""NomicBERT (nomic-embed-text v1 and v1.5) in plain torch, in both layouts: word + token type
embeddings and LayerNorm, then post-LayerNorm blocks with rotary positions on every dimension, a
SwiGLU feed-forward and no biases in the projections.

The block splits at attention like the others (`qkv(x)` then `finish(x, attn)`), so the packed
pieces and the runner are the same; rotary positions are applied in the attention step. Module
and parameter names are the checkpoint's own (Nomic's, which transformers keeps on disk).

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d = H / nh, I intermediate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import NomicBertConfig
from models.layers import attend
from models.packed import PackedLayout, PackedPiece, attend_groups, encoder_pieces
from models.rotary import Rotary, rotate_qkv


class NomicBertEmbeddings(nn.Module):
    """Word + token type (0 for every token: an embedder's) embeddings; no position table."""

    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)


class _Attention(nn.Module):
    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.Wqkv = nn.Linear(H, 3 * H, bias=False)
        self.out_proj = nn.Linear(H, H, bias=False)


class _Mlp(nn.Module):
    """SwiGLU: fc2(fc11(x) * silu(fc12(x)))."""

    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.fc11 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc12 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)


class NomicBertLayer(nn.Module):
    """norm1(x + attn(x)), then norm2(. + mlp(.))."""

    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.attn = _Attention(cfg)
        self.mlp = _Mlp(cfg)
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.num_heads = cfg.num_attention_heads

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., H) -> the QKV projection (..., 3H), before rotary positions."""
        return self.attn.Wqkv(x)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x, attn (..., H) -> (..., H). Row-wise, no mixing."""
        h = self.norm1(x + self.attn.out_proj(attn))
        gated = self.mlp.fc11(h) * F.silu(self.mlp.fc12(h))  # (..., I)
        return self.norm2(h + self.mlp.fc2(gated))


class _Layers(nn.Module):
    def __init__(self, blocks: list[NomicBertLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(blocks)


class NomicBertEncoder(nn.Module):
    """Embeddings + `emb_ln` + NomicBERT blocks: ids -> last hidden states."""

    def __init__(self, cfg: NomicBertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = NomicBertEmbeddings(cfg)
        self.emb_ln = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        blocks = [NomicBertLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.encoder = _Layers(blocks)  # encoder.layers.{i}: the checkpoint's names
        self.blocks: list[NomicBertLayer] = blocks  # typed view of the same modules
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    def embed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """input_ids (...,) -> (..., H); positions enter through rotary attention, not here."""
        emb = self.embeddings
        return self.emb_ln(emb.word_embeddings(input_ids) + emb.token_type_embeddings.weight[0])

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real) -> (B, S, H)."""
        B, S = input_ids.shape
        x = self.embed(input_ids)  # (B, S, H)
        cos, sin = self.rotary(self.position_ids[:S])
        key_mask = attention_mask.view(B, 1, 1, S)
        for layer in self.blocks:
            qkv = rotate_qkv(layer.qkv(x), cos, sin, layer.num_heads)  # (B, S, 3H)
            x = layer.finish(x, attend(qkv, layer.num_heads, key_mask))
        return x

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """As `TransformerEncoder.packed_pieces`."""
        return encoder_pieces(self.embed, self.blocks)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer`: rotary at each token's position, then attention per
        group: qkv (T_pad, 3H) -> writes out[:T] (T, H)."""
        T = layout.num_tokens
        cos, sin = self.rotary(layout.positions)  # (T, d)
        heads = self.config.num_attention_heads
        attend_groups(rotate_qkv(qkv[:T], cos, sin, heads), layout, out, heads)
