"""A BERT encoder (the all-MiniLM-L6-v2 shape) in plain torch, with two execution layouts.

Padded layout: `forward(input_ids, attention_mask)` on `(B, S)` tensors, padding masked out of
attention and pooling. Every op has a static shape for a given `(B, S)`, so the whole forward can
be one CUDA graph (mode FULL).

Packed layout: the tokens of all requests lie back to back in one `(T, H)` tensor, so nothing is
spent on padding in the linear layers. The work splits into *pieces* whose shapes depend only on
`T` (embeddings, QKV projection, output projection + residual + LayerNorm, feed-forward +
LayerNorm), which the runner wraps as PIECEWISE graphs keyed by a token bucket, and attention,
whose shape depends on each request's length, which runs eagerly between them (`PackedLayout`).

Output of both layouts: mean pooling over the real tokens, then L2 normalisation, in float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Activations the checkpoints we load may name in config.json -> F.gelu's `approximate`.
_GELU_APPROX = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT `config.json` that change the computation."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.hidden_act not in _GELU_APPROX:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported (one of {sorted(_GELU_APPROX)})"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} is outside the vocabulary")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def attend(qkv: torch.Tensor, num_heads: int, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Multi-head self-attention from a fused QKV projection.

    qkv: (B, S, 3H); key_mask: (B, 1, 1, S) bool, True = a real token that may be attended to,
    or None when every position is real. Returns (B, S, H).
    """
    B, S, three_h = qkv.shape
    d = three_h // (3 * num_heads)
    # (B, S, 3, nh, d) -> (3, B, nh, S, d): q, k, v as views, no copy.
    q, k, v = qkv.view(B, S, 3, num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)  # (B, nh, S, d)
    return y.transpose(1, 2).reshape(B, S, num_heads * d)


class BertEmbeddings(nn.Module):
    """Word + position + token-type (always type 0: single sentences) embeddings, LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        # input_ids, position_ids: (...,) int64 -> (..., H). Type 0 is one row, broadcast.
        x = self.word_embeddings(input_ids) + self.position_embeddings(position_ids)
        return self.LayerNorm(x + self.token_type_embeddings.weight[0])


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block, split at attention.

    `qkv` is the fused query/key/value projection (the checkpoint's three matrices stacked), so
    it is one matmul and, in the packed layout, one piece of graph with the previous block.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        H = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.qkv = nn.Linear(H, 3 * H)
        self.attn_out = nn.Linear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(H, cfg.intermediate_size)
        self.ffn_out = nn.Linear(cfg.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=cfg.layer_norm_eps)
        self.gelu_approximate = _GELU_APPROX[cfg.hidden_act]

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Everything after attention: x, attn (..., H) -> (..., H). Row-wise, no mixing."""
        x = self.attn_norm(x + self.attn_out(attn))
        h = F.gelu(self.ffn_in(x), approximate=self.gelu_approximate)  # (..., I)
        return self.ffn_norm(x + self.ffn_out(h))


def mean_pool_normalize(summed: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """summed (B, H) float32, counts (B, 1) -> mean over real tokens, L2-normalised (B, H)."""
    return F.normalize(summed / counts.clamp(min=1), p=2.0, dim=-1, eps=1e-12)


class BertEncoder(nn.Module):
    """BERT body + mean pooling + L2 normalisation: a sentence encoder."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        blocks = [BertLayer(cfg) for _ in range(cfg.num_hidden_layers)]
        self.layers = nn.ModuleList(blocks)
        # The same modules, typed (ModuleList iteration is untyped); `.to()` keeps identities.
        self.blocks: list[BertLayer] = blocks
        # Positions 0..P-1; the padded layout slices it, so no arange runs inside a graph.
        self.register_buffer(
            "position_ids", torch.arange(cfg.max_position_embeddings), persistent=False
        )
        self.position_ids: torch.Tensor

    # ---------------------------------------------------------------- padded layout (FULL)
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids (B, S) int64, attention_mask (B, S) bool/int (1 = real) -> (B, H) float32.

        A row whose mask is all zero yields garbage (it is a padding row): callers give padding
        rows at least one real position (the runner uses a length-1 dummy request).
        """
        B, S = input_ids.shape
        x = self.embeddings(input_ids, self.position_ids[:S])  # (B, S, H)
        mask = attention_mask.bool()  # (B, S)
        key_mask = mask.view(B, 1, 1, S)
        for layer in self.blocks:
            x = layer.finish(x, attend(layer.qkv(x), layer.num_heads, key_mask))
        m = mask.unsqueeze(-1).to(torch.float32)  # (B, S, 1)
        summed = (x.float() * m).sum(dim=1)  # (B, H)
        return mean_pool_normalize(summed, m.sum(dim=1))

    # ---------------------------------------------------------------- packed layout (PIECEWISE)
    def packed_pieces(self) -> list[PackedPiece]:
        """The graphable pieces of the packed forward, in order (num_hidden_layers + 1).

        Piece 0 embeds and projects QKV of layer 0; piece i (1..L-1) finishes layer i-1 and
        projects QKV of layer i; piece L finishes the last layer. Eager attention runs between
        consecutive pieces. See `PackedPiece` for the buffer discipline that keeps them graphable.
        """
        n = len(self.layers)
        pieces: list[PackedPiece] = [EmbedPiece(self)]
        pieces += [LayerPiece(self, i) for i in range(n)]
        return pieces

    def attend_packed(self, qkv: torch.Tensor, layout: PackedLayout, out: torch.Tensor) -> None:
        """Eager attention of layer-independent shape: qkv (T_pad, 3H) -> writes out[:T] (T, H).

        Rows past layout.num_tokens (token-bucket padding) are neither read nor written.
        """
        heads = self.config.num_attention_heads
        H = self.config.hidden_size
        for g in layout.groups:
            qkv_g = qkv[g.start : g.end]  # (T_g, 3H), requests of similar length
            out_g = out[g.start : g.end]  # (T_g, H)
            if g.index is None:
                # All requests of the group have the same length: a plain view, no mask.
                y = attend(qkv_g.view(g.num_reqs, g.max_len, 3 * H), heads, None)
                out_g.copy_(y.view(-1, H))
            else:
                assert g.scratch is not None
                # Scatter to (b, Smax, 3H); pad positions stay zero (finite) for the whole call.
                g.scratch.index_copy_(0, g.index, qkv_g)
                y = attend(g.scratch.view(g.num_reqs, g.max_len, 3 * H), heads, g.key_mask)
                torch.index_select(y.reshape(-1, H), 0, g.index, out=out_g)

    def forward_packed(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, layout: PackedLayout
    ) -> torch.Tensor:
        """Eager packed forward: input_ids, position_ids (T,) -> (B, H) float32.

        The reference composition of the pieces; the runner does the same with static buffers.
        """
        T, H = input_ids.shape[0], self.config.hidden_size
        bufs = [input_ids.new_empty((T, H), dtype=self.embeddings.LayerNorm.weight.dtype)]
        bufs.append(torch.empty_like(bufs[0]))
        attn = torch.empty_like(bufs[0])
        pieces = self.packed_pieces()
        qkv = pieces[0](input_ids, position_ids, bufs[0])
        for i, piece in enumerate(pieces[1:]):
            self.attend_packed(qkv, layout, attn)
            qkv = piece(bufs[i % 2], attn, bufs[(i + 1) % 2])
        return layout.pool(qkv)


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
    """input_ids (T,), position_ids (T,) -> writes hidden out (T, H); returns layer 0 QKV."""

    def __init__(self, model: BertEncoder) -> None:
        self.model = model

    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.model.embeddings(a, b)  # (T, H)
        out.copy_(h)
        return self.model.blocks[0].qkv(h)  # (T, 3H)

    def __repr__(self) -> str:
        return "EmbedPiece()"


class LayerPiece(PackedPiece):
    """hidden (T, H), attention output (T, H) -> finishes layer i.

    Writes the new hidden state into `out` and returns layer i+1's QKV (T, 3H), or, for the last
    layer, returns the final hidden state (T, H) (then `out` is untouched).
    """

    def __init__(self, model: BertEncoder, index: int) -> None:
        self.layer = model.blocks[index]
        last = index == len(model.blocks) - 1
        self.next_layer = None if last else model.blocks[index + 1]
        self.index = index

    def __call__(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = self.layer.finish(a, b)  # (T, H)
        if self.next_layer is None:
            return h
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
    scratch: torch.Tensor | None  # (num_reqs * max_len, 3H), zero-initialised


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
        hidden_size: int,
        device: torch.device | str,
        dtype: torch.dtype,
        group_bounds: Sequence[int] = (16, 32, 64, 128),
    ) -> PackedLayout:
        """Layout for requests of `lengths` packed in this order.

        Consecutive requests whose lengths fall between the same `group_bounds` share one SDPA
        call, so a batch sorted by length pads attention only within a length class (a short
        request never pays for a long one's S^2). Lengths must be >= 1.
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
                        torch.zeros((b * smax, 3 * hidden_size), device=device, dtype=dtype),
                    )
                )
            r0 = r1
        return PackedLayout(
            num_tokens=T,
            token_counts=lens.to(device),
            positions=pos.to(device),
            groups=tuple(groups),
        )

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """Mean over each request's real tokens, L2-normalised: hidden (T_pad, H) -> (B, H) f32."""
        h = hidden[: self.num_tokens].float()  # (T, H)
        # Requests are contiguous runs of tokens: a segment sum, much cheaper on a CPU than
        # index_add_ by request id.
        summed = torch.segment_reduce(h, "sum", lengths=self.token_counts)  # (B, H)
        return mean_pool_normalize(summed, self.lengths)


# ---------------------------------------------------------------- checkpoint weights
# Keys a Hugging Face BertModel checkpoint may hold that this encoder does not use.
_IGNORED_PREFIXES = ("pooler.", "cls.")
_IGNORED_KEYS = frozenset({"embeddings.position_ids"})


def hf_weight_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor this encoder needs (Hugging Face BertModel names) -> shape."""
    H, inner = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, H),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, H),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, H),
        "embeddings.LayerNorm.weight": (H,),
        "embeddings.LayerNorm.bias": (H,),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes[f"{p}attention.self.{name}.weight"] = (H, H)
            shapes[f"{p}attention.self.{name}.bias"] = (H,)
        shapes[f"{p}attention.output.dense.weight"] = (H, H)
        shapes[f"{p}attention.output.dense.bias"] = (H,)
        shapes[f"{p}attention.output.LayerNorm.weight"] = (H,)
        shapes[f"{p}attention.output.LayerNorm.bias"] = (H,)
        shapes[f"{p}intermediate.dense.weight"] = (inner, H)
        shapes[f"{p}intermediate.dense.bias"] = (inner,)
        shapes[f"{p}output.dense.weight"] = (H, inner)
        shapes[f"{p}output.dense.bias"] = (H,)
        shapes[f"{p}output.LayerNorm.weight"] = (H,)
        shapes[f"{p}output.LayerNorm.bias"] = (H,)
    return shapes


def check_hf_weights(cfg: BertConfig, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate checkpoint names and shapes; returns them without a "bert." prefix.

    Raises ValueError listing the missing, unexpected and mis-shaped tensors.
    """
    stripped = {k.removeprefix("bert."): v for k, v in tensors.items()}
    expected = hf_weight_shapes(cfg)
    missing = sorted(k for k in expected if k not in stripped)
    unexpected = sorted(
        k
        for k in stripped
        if k not in expected and k not in _IGNORED_KEYS and not k.startswith(_IGNORED_PREFIXES)
    )
    wrong = [
        f"{k}: expected {list(shape)}, got {list(stripped[k].shape)}"
        for k, shape in expected.items()
        if k in stripped and tuple(stripped[k].shape) != shape
    ]
    not_float = [k for k in expected if k in stripped and not stripped[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"missing tensors {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_first(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_first(wrong)}")
    if not_float:
        problems.append(f"non-float tensors {_first(not_float)}")
    if problems:
        raise ValueError("; ".join(problems))
    return stripped


def _first(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


@torch.no_grad()
def load_hf_weights(model: BertEncoder, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a Hugging Face BertModel checkpoint into `model` (casting to its dtype/device).

    The three attention projections are stacked into the fused `qkv` weight, rows q, k, v.
    """
    w = check_hf_weights(model.config, tensors)
    emb = model.embeddings
    emb.word_embeddings.weight.copy_(w["embeddings.word_embeddings.weight"])
    emb.position_embeddings.weight.copy_(w["embeddings.position_embeddings.weight"])
    emb.token_type_embeddings.weight.copy_(w["embeddings.token_type_embeddings.weight"])
    emb.LayerNorm.weight.copy_(w["embeddings.LayerNorm.weight"])
    emb.LayerNorm.bias.copy_(w["embeddings.LayerNorm.bias"])
    for i, layer in enumerate(model.blocks):
        p = f"encoder.layer.{i}."
        qkv = ("query", "key", "value")
        layer.qkv.weight.copy_(torch.cat([w[f"{p}attention.self.{n}.weight"] for n in qkv]))
        layer.qkv.bias.copy_(torch.cat([w[f"{p}attention.self.{n}.bias"] for n in qkv]))
        layer.attn_out.weight.copy_(w[f"{p}attention.output.dense.weight"])
        layer.attn_out.bias.copy_(w[f"{p}attention.output.dense.bias"])
        layer.attn_norm.weight.copy_(w[f"{p}attention.output.LayerNorm.weight"])
        layer.attn_norm.bias.copy_(w[f"{p}attention.output.LayerNorm.bias"])
        layer.ffn_in.weight.copy_(w[f"{p}intermediate.dense.weight"])
        layer.ffn_in.bias.copy_(w[f"{p}intermediate.dense.bias"])
        layer.ffn_out.weight.copy_(w[f"{p}output.dense.weight"])
        layer.ffn_out.bias.copy_(w[f"{p}output.dense.bias"])
        layer.ffn_norm.weight.copy_(w[f"{p}output.LayerNorm.weight"])
        layer.ffn_norm.bias.copy_(w[f"{p}output.LayerNorm.bias"])
