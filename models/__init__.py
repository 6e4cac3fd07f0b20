"""Sentence-encoder models in plain torch: the encoder families (BERT, RoBERTa, XLM-RoBERTa,
MPNet sharing one post-LayerNorm block; ModernBERT with its own), the sentence-transformers
pipeline, the classification heads of rerankers and classifiers, the tokenizer, the loader
(directory or hub id) and a toy model."""

from __future__ import annotations

from models.config import (
    SUPPORTED_MODEL_TYPES,
    TASKS,
    EncoderConfig,
    HeadConfig,
    ModernBertConfig,
)
from models.encoder import SentenceEncoder, cpu_has_native_bf16
from models.errors import ModelLoadError
from models.heads import ClassificationHead
from models.hub import resolve_model
from models.loader import DEFAULT_MODEL_NAME, default_model_path, load_sentence_encoder
from models.model import SentenceModel
from models.packed import PackedLayout, PackedPiece
from models.pipeline import POOLING_MODES
from models.tokenizer import EncodedPairs, TextTokenizer
from models.toy import make_toy_encoder

__all__ = [
    "DEFAULT_MODEL_NAME",
    "POOLING_MODES",
    "SUPPORTED_MODEL_TYPES",
    "TASKS",
    "ClassificationHead",
    "EncodedPairs",
    "EncoderConfig",
    "HeadConfig",
    "ModelLoadError",
    "ModernBertConfig",
    "PackedLayout",
    "PackedPiece",
    "SentenceEncoder",
    "SentenceModel",
    "TextTokenizer",
    "cpu_has_native_bf16",
    "default_model_path",
    "load_sentence_encoder",
    "make_toy_encoder",
    "resolve_model",
]
