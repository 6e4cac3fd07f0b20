"""The sentence-transformers pipeline after the Transformer module, in plain torch: Pooling,
Dense, Normalize, applied in the order `modules.json` lists them.

`SentencePipeline` runs in both layouts, always in float32 (it works on pooled (B, H) rows, so
float32 costs nothing next to the encoder and keeps the output exact):
- padded: `forward(hidden (B, S, H), mask (B, S))`, static shapes, inside the FULL graph;
- packed: `pool_packed(hidden (T_pad, H), layout)`, eager, after the PIECEWISE pieces.
Each pooling mode is sentence-transformers' `Pooling` for right-padded text (several modes are
concatenated in the order given).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.packed import PackedLayout

# sentence-transformers' pooling mode names.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Dense activation (sentence-transformers saves the class's full name) -> function.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "torch.nn.modules.activation.Tanh": torch.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": F.relu,
    "torch.nn.modules.activation.GELU": F.gelu,
    "torch.nn.modules.activation.Sigmoid": torch.sigmoid,
}


class Pooling(nn.Module):
    """Token states -> one row per text, by each of `modes` (concatenated): (B, len(modes) * H)."""

    def __init__(self, modes: Sequence[str]) -> None:
        super().__init__()
        unknown = [m for m in modes if m not in POOLING_MODES]
        if not modes or unknown:
            raise ValueError(f"pooling modes {list(modes)}: each must be one of {POOLING_MODES}")
        self.modes = tuple(modes)

    @property
    def name(self) -> str:
        return "+".join(self.modes)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, S, H), mask (B, S) bool, right-padded -> (B, len(modes) * H) float32."""
        x = hidden.float()
        m = mask.unsqueeze(-1).to(torch.float32)  # (B, S, 1)
        counts = m.sum(dim=1)  # (B, 1), >= 1
        out: list[torch.Tensor] = []
        for mode in self.modes:
            if mode == "cls":
                out.append(x[:, 0])
            elif mode == "lasttoken":
                last = (counts - 1).to(torch.int64).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
                out.append(torch.gather(x, 1, last).squeeze(1))  # (B, H)
            elif mode == "max":
                out.append(x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1))
            elif mode == "weightedmean":
                # Weights 1..S on the real tokens (right padding: the first real token is 1).
                w = m * torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(
                    1, -1, 1
                )  # (B, S, 1)
                out.append((x * w).sum(dim=1) / w.sum(dim=1))
            else:  # mean, mean_sqrt_len_tokens
                summed = (x * m).sum(dim=1)  # (B, H)
                out.append(summed / (counts if mode == "mean" else counts.sqrt()))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    def pool_packed(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden (T_pad, H), rows past layout.num_tokens ignored -> (B, len(modes) * H) f32."""
        h = hidden[: layout.num_tokens].float()  # (T, H)
        counts = layout.token_counts  # (B,) int64
        out: list[torch.Tensor] = []
        for mode in self.modes:
            # Requests are contiguous runs of tokens: segment reductions, much cheaper on a CPU
            # than index_add_ by request id.
            if mode in ("cls", "lasttoken"):
                ends = torch.cumsum(counts, 0)  # (B,) one past each request's last token
                rows = ends - counts if mode == "cls" else ends - 1
                out.append(h.index_select(0, rows))
            elif mode == "max":
                out.append(torch.segment_reduce(h, "max", lengths=counts))
            elif mode == "weightedmean":
                w = (layout.positions + 1).to(torch.float32).view(-1, 1)  # (T, 1)
                summed = torch.segment_reduce(h * w, "sum", lengths=counts)
                out.append(summed / torch.segment_reduce(w, "sum", lengths=counts))
            else:
                summed = torch.segment_reduce(h, "sum", lengths=counts)  # (B, H)
                lens = layout.lengths  # (B, 1) float32
                out.append(summed / (lens if mode == "mean" else lens.sqrt()))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


class Dense(nn.Module):
    """sentence-transformers' Dense: activation(linear(x)) (+ x, or a projection of it, with
    `use_residual`): (B, in_features) -> (B, out_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        activation: str,
        use_residual: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation_function {activation!r}: one of {sorted(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        self.residual: nn.Linear | None = None
        self.use_residual = use_residual
        if use_residual and in_features != out_features:
            self.residual = nn.Linear(in_features, out_features, bias=False)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activation(self.linear(x))
        if self.use_residual:
            y = y + (x if self.residual is None else self.residual(x))
        return y


class Normalize(nn.Module):
    """L2 normalisation of each row, as sentence-transformers' Normalize."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=-1)


class SentencePipeline(nn.Module):
    """Pooling, then Dense/Normalize steps in order: last hidden state -> sentence embedding."""

    def __init__(self, pooling: Pooling, steps: Sequence[Dense | Normalize], hidden_size: int):
        super().__init__()
        self.pooling = pooling
        self.steps = nn.ModuleList(steps)
        self._steps: list[Dense | Normalize] = list(steps)  # typed view of the same modules
        dim = hidden_size * len(pooling.modes)
        for step in self._steps:
            if isinstance(step, Dense):
                if step.linear.in_features != dim:
                    raise ValueError(
                        f"Dense expects {step.linear.in_features} features, the pipeline gives "
                        f"{dim} at that point"
                    )
                dim = step.out_features
        self.dimensions = dim
        # Normalize last: unit rows. (A Dense after a Normalize un-normalises them.)
        self.normalized = bool(self._steps) and isinstance(self._steps[-1], Normalize)

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        x = pooled  # (B, D) float32
        for step in self._steps:
            x = step(x)
        return x

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, S, H), mask (B, S) bool -> (B, dimensions) float32."""
        return self._finish(self.pooling(hidden, mask))

    def pool_packed(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden (T_pad, H) -> (B, dimensions) float32."""
        return self._finish(self.pooling.pool_packed(hidden, layout))
