"""The packed layout: the tokens of all requests back to back in one `(T, H)` tensor.

Nothing is spent on padding in the linear layers. The work splits into *pieces* whose shapes
depend only on `T` (embeddings, QKV projection, output projection + residual + LayerNorm,
feed-forward + LayerNorm), which the runner wraps as PIECEWISE graphs keyed by a token bucket,
and attention, whose shape depends on each request's length, which runs eagerly between them
over the attention groups of a `PackedLayout`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from models.layers import attend, with_key_mask


class Block(Protocol):
    """An encoder block split at attention (`layers.EncoderLayer`, `modernbert.ModernBertLayer`)."""

    def qkv(self, x: torch.Tensor) -> torch.Tensor: ...  # (..., H) -> (..., 3H)

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor: ...  # -> (..., H)


Rows = Callable[[torch.Tensor], torch.Tensor]  # a row-wise map (..., H) -> (..., H)
Embed = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # ids, positions (T,) -> (T, H)


class PackedPiece(ABC):
    """A graphable piece of the packed forward.

    Buffer discipline, for CUDA-graph correctness: every input is a slice of a static buffer the
    runner owns (ids, positions, hidden states, attention output), and a piece never writes its
    own inputs. The residual stream ping-pongs between two hidden buffers (read one, write the
    other), so running a piece twice (warm-up, then capture) gives the same result. The return
    value is graph memory, consumed at once by the eager attention that follows (or pooling).
    """

    @abstractmethod
    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor: ...


class EmbedPiece(PackedPiece):
    """input_ids (T,), 0-based position_ids (T,) -> writes hidden `out` (T, H); returns layer 0
    QKV (T, 3H)."""

    def __init__(self, embeddings: Embed, first: Block) -> None:
        self.embeddings = embeddings
        self.first = first

    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.embeddings(a, b)  # (T, H)
        out.copy_(h)
        return self.first.qkv(h)  # (T, 3H)

    def __repr__(self) -> str:
        return "EmbedPiece()"


class LayerPiece(PackedPiece):
    """hidden (T, H), attention output (T, H) -> finishes layer i.

    Writes the new hidden state into `out` and returns layer i+1's QKV (T, 3H), or, for the last
    layer, returns the last hidden state (T, H), after `final` where the family has a final
    norm (then `out` is untouched).
    """

    def __init__(
        self, layer: Block, next_layer: Block | None, index: int, final: Rows | None = None
    ) -> None:
        self.layer = layer
        self.next_layer = next_layer
        self.index = index
        self.final = final

    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.layer.finish(a, b)  # (T, H)
        if self.next_layer is None:
            return h if self.final is None else self.final(h)
        out.copy_(h)
        return self.next_layer.qkv(h)  # (T, 3H)

    def __repr__(self) -> str:
        return f"LayerPiece({self.index})"


@dataclass(frozen=True)
class AttentionGroup:
    """Consecutive requests of similar length, attended together in one padded SDPA call.

    Tokens [start, end) of the packed tensor. `index` maps each packed token to its row in the
    (num_reqs * max_len) padded scratch; None when all lengths are equal (no padding at all).
    """

    start: int
    end: int
    num_reqs: int
    max_len: int
    index: torch.Tensor | None  # (T_g,) int64
    key_mask: torch.Tensor | None  # (num_reqs, 1, 1, max_len) bool
    scratch: torch.Tensor | None  # (num_reqs * max_len, 3A), zero-initialised


@dataclass(frozen=True)
class PackedLayout:
    """Where each request's tokens lie in the packed tensor; built once per batch (eager only)."""

    num_tokens: int
    token_counts: torch.Tensor  # (B,) int64: real tokens per request
    positions: torch.Tensor  # (T,) int64: position of each packed token inside its request
    groups: tuple[AttentionGroup, ...]

    @property
    def num_reqs(self) -> int:
        return int(self.token_counts.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        """(B, 1) float32: the token counts as the divisor of the mean."""
        return self.token_counts.to(torch.float32).view(-1, 1)

    @staticmethod
    def build(
        lengths: Sequence[int],
        *,
        attention_width: int,
        device: torch.device | str,
        dtype: torch.dtype,
        group_bounds: Sequence[int] = (16, 32, 64, 128),
    ) -> PackedLayout:
        """Layout for requests of `lengths` packed in this order.

        Consecutive requests whose lengths fall between the same `group_bounds` share one SDPA
        call, so a batch sorted by length pads attention only within a length class (a short
        request never pays for a long one's S^2). Lengths must be >= 1. attention_width: A, the
        width of attention's output (the QKV projection is 3A wide).
        """
        if not lengths or min(lengths) < 1:
            raise ValueError("every packed request needs at least one token")
        bounds = sorted(group_bounds)

        def cls(n: int) -> int:
            return next((i for i, b in enumerate(bounds) if n <= b), len(bounds))

        lens = torch.tensor(lengths, dtype=torch.int64)
        T = int(lens.sum())
        # Position of each token inside its request, and its request id: (T,), no Python per token.
        seg = torch.repeat_interleave(torch.arange(len(lengths)), lens)
        starts = torch.cumsum(lens, 0) - lens
        pos = torch.arange(T) - starts[seg]

        groups: list[AttentionGroup] = []
        r0 = 0
        while r0 < len(lengths):
            r1 = r0 + 1
            c = cls(lengths[r0])
            while r1 < len(lengths) and cls(lengths[r1]) == c:
                r1 += 1
            group_lens = lengths[r0:r1]
            t0, t1 = int(starts[r0]), int(starts[r0]) + sum(group_lens)
            smax = max(group_lens)
            b = r1 - r0
            if min(group_lens) == smax:
                groups.append(AttentionGroup(t0, t1, b, smax, None, None, None))
            else:
                local = (seg[t0:t1] - r0) * smax + pos[t0:t1]  # (T_g,) row in (b * Smax)
                glens = lens[r0:r1]
                key_mask = torch.arange(smax).view(1, smax) < glens.view(b, 1)  # (b, Smax)
                groups.append(
                    AttentionGroup(
                        t0,
                        t1,
                        b,
                        smax,
                        local.to(device),
                        key_mask.view(b, 1, 1, smax).to(device),
                        torch.zeros((b * smax, 3 * attention_width), device=device, dtype=dtype),
                    )
                )
            r0 = r1
        return PackedLayout(
            num_tokens=T,
            token_counts=lens.to(device),
            positions=pos.to(device),
            groups=tuple(groups),
        )


def encoder_pieces(
    embeddings: Embed, blocks: Sequence[Block], final: Rows | None = None
) -> list[PackedPiece]:
    """The graphable pieces of a packed forward, in order (len(blocks) + 1).

    Piece 0 embeds and projects QKV of block 0; piece i (1..L-1) finishes block i-1 and projects
    QKV of block i; piece L finishes the last block (then `final`, where the family has a final
    norm) and returns the last hidden state (T, H). Eager attention runs between the pieces.
    """
    pieces: list[PackedPiece] = [EmbedPiece(embeddings, blocks[0])]
    for i, block in enumerate(blocks):
        if i + 1 < len(blocks):
            pieces.append(LayerPiece(block, blocks[i + 1], i))
        else:
            pieces.append(LayerPiece(block, None, i, final))
    return pieces


# A group's padded QKV (b, Smax, 3A) -> what its attention adds on top of the padding mask.
ExtraMask = Callable[[torch.Tensor], torch.Tensor | None]


def attend_groups(
    qkv: torch.Tensor,
    layout: PackedLayout,
    out: torch.Tensor,
    num_heads: int,
    extra_mask: ExtraMask | None = None,
    scale: float | None = None,
) -> None:
    """Eager attention over the layout's groups: qkv (T_pad, 3A) -> writes out[:T] (T, A), A the
    width of attention's output (the hidden size, except where a family sizes its heads apart:
    Qwen3, Gemma3).

    Rows past layout.num_tokens (token-bucket padding) are neither read nor written.
    extra_mask(qkv_g): a mask or bias on top of the group's padding (see `layers.with_key_mask`),
    from the group's QKV (b, Smax, 3A) laid out padded: a relative position bias, a sliding
    window or a causal mask, which every request of the group shares since each starts at
    position 0 (one (1, ., Smax, Smax) tensor), or DeBERTa's position scores, which depend on
    the content.
    scale: of q.k (None: 1 / sqrt(d)).
    """
    A = out.shape[-1]
    for g in layout.groups:
        qkv_g = qkv[g.start : g.end]  # (T_g, 3A), requests of similar length
        out_g = out[g.start : g.end]  # (T_g, A)
        if g.index is None:
            # All requests of the group have the same length: a plain view, no key mask.
            padded = qkv_g.view(g.num_reqs, g.max_len, 3 * A)
            extra = None if extra_mask is None else extra_mask(padded)
            y = attend(padded, num_heads, extra, scale)
            out_g.copy_(y.view(-1, A))
        else:
            assert g.scratch is not None and g.key_mask is not None
            # Scatter to (b, Smax, 3A); pad positions stay zero (finite) for the whole call.
            g.scratch.index_copy_(0, g.index, qkv_g)
            padded = g.scratch.view(g.num_reqs, g.max_len, 3 * A)
            extra = None if extra_mask is None else extra_mask(padded)
            mask = g.key_mask if extra is None else with_key_mask(extra, g.key_mask)
            y = attend(padded, num_heads, mask, scale)
            torch.index_select(y.reshape(-1, A), 0, g.index, out=out_g)
