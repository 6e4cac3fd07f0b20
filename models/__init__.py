"""Sentence-encoder models: a plain-torch BERT, its loader and tokenizer, and a toy model."""

from __future__ import annotations

from models.bert import BertConfig, BertEncoder, PackedLayout, PackedPiece
from models.encoder import SentenceEncoder, cpu_has_native_bf16
from models.loader import (
    DEFAULT_MODEL_NAME,
    ModelLoadError,
    default_model_path,
    load_sentence_encoder,
)
from models.tokenizer import TextTokenizer
from models.toy import make_toy_encoder

__all__ = [
    "DEFAULT_MODEL_NAME",
    "BertConfig",
    "BertEncoder",
    "ModelLoadError",
    "PackedLayout",
    "PackedPiece",
    "SentenceEncoder",
    "TextTokenizer",
    "cpu_has_native_bf16",
    "default_model_path",
    "load_sentence_encoder",
    "make_toy_encoder",
]
