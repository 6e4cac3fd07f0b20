"""What a model directory serves: sentence embeddings ("embed"), one relevance logit per
(query, document) pair ("rerank"), or one logit per label ("classify"), and whether its pairs
need token types derived from the ids.

The task is read from the directory: a sentence-transformers embedding pipeline (modules.json
with Pooling) embeds; a sentence-transformers CrossEncoder or a plain Hugging Face directory
whose config.json `architectures` is a `*ForSequenceClassification` reranks (one label) or
classifies (several); anything else embeds. A caller may ask for a task instead; one the
directory cannot serve is a `ModelLoadError` naming the file that says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.config import (
    TASKS,
    BodyConfig,
    DebertaV2Config,
    EncoderConfig,
    HeadConfig,
    read_head_config,
)
from models.errors import ModelLoadError
from models.st_modules import (
    FEATURE_EXTRACTION,
    SBERT_CONFIG,
    SEQUENCE_CLASSIFICATION,
    ST_CONFIG,
    ModuleList,
    Prompts,
    read_json_object,
)


def check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")


def read_head(config_file: Path, raw: dict[str, Any]) -> HeadConfig | None:
    """The classification head config.json declares (None: not a sequence classifier)."""
    try:
        return read_head_config(raw)
    except ValueError as e:
        raise ModelLoadError(config_file, str(e)) from e


def resolve_task(
    requested: str | None,
    directory: Path,
    modules: ModuleList,
    head: HeadConfig | None,
    st_config: Prompts,
    raw_config: dict[str, Any],
) -> str:
    """The task the directory is served as: `requested`, or the one it declares (see the module
    docstring). ModelLoadError, naming the file, for a task it cannot serve."""
    check_task(requested)
    config_file = modules.transformer.folder / "config.json"
    declared = modules.transformer.task
    if st_config.model_type == "CrossEncoder" and declared == FEATURE_EXTRACTION:
        raise ModelLoadError(
            directory / ST_CONFIG,
            f"model_type 'CrossEncoder', but {modules.file} declares an embedding pipeline",
        )
    # Declared a cross-encoder by sentence-transformers: its head is all it serves.
    cross = declared == SEQUENCE_CLASSIFICATION or st_config.model_type == "CrossEncoder"
    if cross and head is None:
        raise ModelLoadError(
            config_file,
            f"architectures {raw_config.get('architectures')}: a cross-encoder needs a "
            "*ForSequenceClassification head",
        )
    if requested is None:
        if head is None or declared == FEATURE_EXTRACTION:
            return "embed"
        return "rerank" if head.num_labels == 1 else "classify"
    if requested == "embed":
        if cross:
            file = (
                modules.transformer.folder / SBERT_CONFIG
                if declared == SEQUENCE_CLASSIFICATION
                else directory / ST_CONFIG
            )
            raise ModelLoadError(
                file, "a cross-encoder (its logits, no sentence embedding) cannot embed"
            )
        return "embed"
    if head is None:
        raise ModelLoadError(
            config_file,
            f"architectures {raw_config.get('architectures')}: no sequence-classification head "
            f"to {requested} with (a *ForSequenceClassification model is needed)",
        )
    if requested == "rerank" and head.num_labels != 1:
        raise ModelLoadError(
            config_file,
            f"{head.num_labels} labels {list(head.labels)}: a reranker scores with one label; "
            "serve this model as classify",
        )
    return requested


def reads_pair_types(task: str, cfg: BodyConfig, folder: Path) -> bool:
    """Whether a head model reads the pair template's token types: its tokenizer hands them to
    the model (BERT's, ELECTRA's, ALBERT's and DeBERTa-v2's; RoBERTa's, XLM-RoBERTa's and
    MPNet's do not; DistilBERT, ModernBERT and DeBERTa-v3 have no token types).
    False: every token type 0, as embedding models always are."""
    if task == "embed" or not isinstance(cfg, EncoderConfig | DebertaV2Config):
        return False
    if not cfg.token_types or cfg.type_vocab_size < 2:
        return False
    tok_cfg = read_json_object(folder / "tokenizer_config.json", required=False) or {}
    names = tok_cfg.get("model_input_names")
    if isinstance(names, list):
        return "token_type_ids" in names
    return cfg.family in ("albert", "bert", "electra", "deberta-v2")  # their tokenizers' default
