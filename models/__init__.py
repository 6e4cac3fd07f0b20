"""Sentence-encoder models in plain torch: the encoder families (BERT, RoBERTa, XLM-RoBERTa,
MPNet, DistilBERT, ELECTRA, ALBERT sharing one post-LayerNorm block, DeBERTa-v2/v3 that block
with disentangled attention, ModernBERT, NomicBERT and GTE with their own blocks) and the
decoders read as embedders (Qwen3, EmbeddingGemma's Gemma3), the sentence-transformers
pipeline, the classification heads of rerankers and classifiers, the tokenizer, the loader
(directory or hub id) and a toy model."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module it lives in, imported on first use: the tokenizer and
# the configs serve the HTTP front ends, which never import torch.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "config": (
        "SUPPORTED_MODEL_TYPES",
        "TASKS",
        "DebertaV2Config",
        "EncoderConfig",
        "Gemma3Config",
        "GteConfig",
        "HeadConfig",
        "ModernBertConfig",
        "NomicBertConfig",
        "Qwen3Config",
    ),
    "encoder": ("SentenceEncoder", "cpu_has_native_bf16"),
    "errors": ("ModelLoadError",),
    "heads": ("ClassificationHead",),
    "hub": ("resolve_model",),
    "loader": ("DEFAULT_MODEL_NAME", "default_model_path", "load_sentence_encoder"),
    "model": ("SentenceModel",),
    "packed": ("PackedLayout", "PackedPiece"),
    "pipeline": ("POOLING_MODES",),
    "tokenizer": ("EncodedPairs", "InputTooLong", "TextTokenizer"),
    "toy": ("make_toy_encoder",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ruff: noqa: F401 - these imports are the type checker's view of the lazy names above
if TYPE_CHECKING:  # the same names (a test keeps both lists equal)
    from models.config import (
        SUPPORTED_MODEL_TYPES,
        TASKS,
        DebertaV2Config,
        EncoderConfig,
        Gemma3Config,
        GteConfig,
        HeadConfig,
        ModernBertConfig,
        NomicBertConfig,
        Qwen3Config,
    )
    from models.encoder import SentenceEncoder, cpu_has_native_bf16
    from models.errors import ModelLoadError
    from models.heads import ClassificationHead
    from models.hub import resolve_model
    from models.loader import DEFAULT_MODEL_NAME, default_model_path, load_sentence_encoder
    from models.model import SentenceModel
    from models.packed import PackedLayout, PackedPiece
    from models.pipeline import POOLING_MODES
    from models.tokenizer import EncodedPairs, InputTooLong, TextTokenizer
    from models.toy import make_toy_encoder
