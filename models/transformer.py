"""`TransformerEncoder`: the body BERT, RoBERTa, XLM-RoBERTa, MPNet, DistilBERT, ELECTRA and
ALBERT share (embeddings, a stack of post-LayerNorm blocks, ALBERT's shared between layers,
MPNet's relative position bias where configured), in both layouts, up to the last hidden state.
Pooling and the rest of the sentence-transformers pipeline come after (`pipeline.py`); the
other families' bodies (`model.EncoderBody`) have the same interface.

Padded layout: `hidden_states(input_ids, attention_mask)` on `(B, S)` tensors, padding masked
out of attention. Every op has a static shape for a given `(B, S)`, so the whole forward can be
one CUDA graph (mode FULL).

Packed layout: `packed_pieces()` and `attend_packed(...)` (see `packed.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import EncoderConfig
from models.layers import Embeddings, EncoderLayer, RelativePositionBias, attend, with_key_mask
from models.packed import PackedLayout, PackedPiece, attend_groups, encoder_pieces


class TransformerEncoder(nn.Module):
    """Embeddings + encoder blocks (+ MPNet's relative position bias): ids -> hidden states."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        modules = [EncoderLayer(cfg) for _ in range(cfg.block_modules)]
        self.layers = nn.ModuleList(modules)
        # The blocks in the order the forward runs them (ALBERT runs shared ones repeatedly),
        # typed (ModuleList iteration is untyped); `.to()` keeps identities.
        self.blocks: list[EncoderLayer] = [modules[i] for i in cfg.block_order]
        self.relative_bias: RelativePositionBias | None = None
        if cfg.relative_attention:
            self.relative_bias = RelativePositionBias(cfg, cfg.max_positions)
        # 0-based positions 0..P-1; the padded layout slices it, so no arange runs in a graph.
        self.register_buffer("position_ids", torch.arange(cfg.max_positions), persistent=False)
        self.position_ids: torch.Tensor

    # ---------------------------------------------------------------- padded layout (FULL)
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool (True = real) -> (B, S, H).

        A row whose mask is all False yields garbage (it is a padding row): callers give padding
        rows at least one real position (the runner uses a length-1 dummy request).
        """
        B, S = input_ids.shape
        x = self.embeddings(input_ids, self.position_ids[:S])  # (B, S, H)
        mask: torch.Tensor = attention_mask.view(B, 1, 1, S)  # bool key mask
        if self.relative_bias is not None:
            # One bias for every layer: (B, nh, S, S), -inf at padded keys.
            mask = with_key_mask(self.relative_bias(S).to(x.dtype), mask)
        for layer in self.blocks:
            x = layer.finish(x, attend(layer.qkv(x), layer.num_heads, mask))
        return x

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """The graphable pieces of the packed forward (`packed.encoder_pieces`)."""
        return encoder_pieces(self.embeddings, self.blocks)

    def attend_packed(
        self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor, layer: int = 0
    ) -> None:
        """Eager attention of layer `layer` (the same for every layer here): qkv (T_pad, 3H) ->
        writes out[:T] (T, H). With a relative position bias, each attention group adds the
        bias of its own padded length."""
        bias = self.relative_bias
        extra = None if bias is None else (lambda g: bias(g.shape[1]).to(g.dtype))  # (1, nh, S, S)
        attend_groups(qkv, layout, out, self.config.num_attention_heads, extra)
