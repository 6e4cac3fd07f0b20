"""Sequence-classification heads (rerankers and classifiers) in plain torch, in both layouts.

A head takes the place of the sentence-transformers pipeline after the encoder body and has its
interface (`forward(hidden, mask)` for the padded layout, `pool_packed(hidden, layout)` for the
packed one, `dimensions`, `normalized`, `pooling`), so the runner, batcher and graph cache
serve it unchanged: a request's row is its (num_labels,) float32 logits instead of an
embedding. Like the pipeline it runs in float32 on pooled (B, H) rows.

Shapes: B requests, S positions, T packed tokens, H hidden size, L labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.config import HeadConfig
from models.packed import PackedLayout
from models.pipeline import Pooling

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class ClassificationHead(nn.Module):
    """Pooled token states -> dense -> activation (-> LayerNorm) -> out: (B, L) float32 logits.

    `dense`, `norm` and `out` are the head's own layers (see `head_checkpoint_names` for the
    checkpoint tensors each family stores them under).
    """

    normalized = False  # logits, not unit rows

    def __init__(self, cfg: HeadConfig, hidden_size: int) -> None:
        super().__init__()
        self.config = cfg
        self.pooling = Pooling((cfg.pooling,))
        self.dense = nn.Linear(hidden_size, hidden_size, bias=cfg.dense_bias)
        self.activation: Callable[[torch.Tensor], torch.Tensor] = _ACTIVATIONS[cfg.activation]
        self.norm: nn.LayerNorm | None = None
        if cfg.norm:
            self.norm = nn.LayerNorm(hidden_size, eps=cfg.norm_eps, bias=cfg.norm_bias)
        self.out = nn.Linear(hidden_size, cfg.num_labels)

    @property
    def dimensions(self) -> int:
        return self.config.num_labels

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def _finish(self, pooled: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.dense(pooled))  # (B, H) float32
        if self.norm is not None:
            x = self.norm(x)
        return self.out(x)  # (B, L)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hidden (B, S, H), mask (B, S) bool -> (B, L) float32 logits."""
        return self._finish(self.pooling(hidden, mask))

    def pool_packed(self, hidden: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
        """hidden (T_pad, H), rows past layout.num_tokens ignored -> (B, L) float32 logits."""
        return self._finish(self.pooling.pool_packed(hidden, layout))


def head_checkpoint_names(head: ClassificationHead) -> dict[str, tuple[str, ...]]:
    """Each parameter of `head` -> its tensor in a Hugging Face checkpoint, after the base
    model's prefix is stripped (`bert.pooler.dense` -> `pooler.dense`)."""
    family = head.config.family
    if family in ("bert", "deberta-v2", "gte", "new"):  # DeBERTa's ContextPooler, GTE's pooler
        layers = {"dense": "pooler.dense", "out": "classifier"}
    elif family == "albert":
        layers = {"dense": "pooler", "out": "classifier"}
    elif family == "distilbert":
        layers = {"dense": "pre_classifier", "out": "classifier"}
    elif family == "modernbert":
        layers = {"dense": "head.dense", "norm": "head.norm", "out": "classifier"}
    else:  # roberta, xlm-roberta, mpnet, electra: RobertaClassificationHead's layout
        layers = {"dense": "classifier.dense", "out": "classifier.out_proj"}
    names: dict[str, tuple[str, ...]] = {}
    for name, _ in head.named_parameters():
        layer, param = name.split(".")
        names[name] = (f"{layers[layer]}.{param}",)
    return names


def is_head_tensor(key: str) -> bool:
    """Checkpoint tensors (base prefix stripped) a classification head may own."""
    return key.startswith(("pooler.", "classifier.", "head.", "pre_classifier."))
