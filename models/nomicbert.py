"""NomicBERT (nomic-embed-text v1 and v1.5) in plain torch, in both layouts: word + token type
embeddings and LayerNorm, then post-LayerNorm blocks with rotary positions on every dimension, a
SwiGLU feed-forward and no biases in the projections.

The block splits at attention like the others (`qkv(x)` then `finish(x, attn)`), so the packed
pieces and the runner are the same; rotary positions are applied in the attention step
(`rotary.RotaryBody`). Module and parameter names are the checkpoint's own (Nomic's, which
transformers keeps on disk).

Shapes: B requests, S positions, T packed tokens, H hidden, nh heads, d = H / nh, I intermediate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import NomicBertConfig
from models.rotary import Rotary, RotaryBody


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


class NomicBertEncoder(RotaryBody):
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
