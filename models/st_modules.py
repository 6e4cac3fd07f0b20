"""Reading a sentence-transformers directory: `modules.json` and each module's files, into a
`SentencePipeline`, plus the Transformer module's settings and the prompts.

Both layouts are read: the classic one most hub models have (`sentence_transformers.models.*`
types, `pooling_mode_mean_tokens: true`, `word_embedding_dimension`, `max_seq_length` in
sentence_bert_config.json) and the one sentence-transformers 6 writes (module paths under
`sentence_transformers.base...` / `...sentence_transformer.modules...`, `"pooling_mode": "cls"`,
`embedding_dimension`). A directory without modules.json is a plain Hugging Face model: mean
pooling and no normalisation, as sentence-transformers does. A sentence-transformers 6
CrossEncoder is one Transformer module of `transformer_task` sequence-classification (its head
is the model's own, see `heads.py`), with `model_type` CrossEncoder in
config_sentence_transformers.json. Whatever is not understood is a `ModelLoadError` naming the
file and the module, never skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from models.errors import ModelLoadError
from models.pipeline import ACTIVATIONS, POOLING_MODES, Dense, Normalize, Pooling, SentencePipeline
from models.weights import load_named, read_safetensors

MODULES_JSON = "modules.json"
SBERT_CONFIG = "sentence_bert_config.json"
ST_CONFIG = "config_sentence_transformers.json"

# modules.json "type" -> the kind of module, for every name sentence-transformers has written.
MODULE_TYPES = {
    "sentence_transformers.models.Transformer": "Transformer",
    "sentence_transformers.base.modules.transformer.Transformer": "Transformer",
    "sentence_transformers.sentence_transformer.modules.transformer.Transformer": "Transformer",
    "sentence_transformers.models.Pooling": "Pooling",
    "sentence_transformers.sentence_transformer.modules.pooling.Pooling": "Pooling",
    "sentence_transformers.models.Dense": "Dense",
    "sentence_transformers.base.modules.dense.Dense": "Dense",
    "sentence_transformers.sentence_transformer.modules.dense.Dense": "Dense",
    "sentence_transformers.models.Normalize": "Normalize",
    "sentence_transformers.base.modules.normalize.Normalize": "Normalize",
    "sentence_transformers.sentence_transformer.modules.normalize.Normalize": "Normalize",
    # Dropout is the identity at inference.
    "sentence_transformers.models.Dropout": "Dropout",
    "sentence_transformers.sentence_transformer.modules.dropout.Dropout": "Dropout",
}
# Classic Pooling keys, in the order sentence-transformers concatenates the modes.
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_EMBEDDING = "sentence_embedding"
FEATURE_EXTRACTION = "feature-extraction"  # the Transformer gives token states: an embedder
SEQUENCE_CLASSIFICATION = "sequence-classification"  # it gives the head's logits: a cross-encoder
# What the Transformer module outputs for each transformer_task: (module_output_name, the
# model output read, modality_config's method_output_name).
_TASK_OUTPUTS = {
    FEATURE_EXTRACTION: ("token_embeddings", "last_hidden_state"),
    SEQUENCE_CLASSIFICATION: ("scores", "logits"),
}
# A CrossEncoder's activation_fn -> the name the service applies to a reranker's logit.
SCORE_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
}
# config_sentence_transformers.json model_type values served.
ST_MODEL_TYPES = ("SentenceTransformer", "CrossEncoder")
_DENSE_TANH = "torch.nn.modules.activation.Tanh"  # Dense's default activation


@dataclass(frozen=True)
class TransformerSettings:
    """The Transformer module: where its files are, and what sentence_bert_config.json says.

    task: its transformer_task (FEATURE_EXTRACTION or SEQUENCE_CLASSIFICATION); None for a
    plain Hugging Face directory, which declares none (config.json's architectures decide).
    """

    folder: Path
    max_seq_length: int | None = None  # None: the tokenizer's model_max_length
    do_lower_case: bool = False
    task: str | None = FEATURE_EXTRACTION


@dataclass(frozen=True)
class Prompts:
    """config_sentence_transformers.json: named text prefixes, the one used by default, and
    the kind of model (SentenceTransformer or CrossEncoder)."""

    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    model_type: str = "SentenceTransformer"
    activation: str | None = None  # a CrossEncoder's score activation (see SCORE_ACTIVATIONS)


@dataclass(frozen=True)
class ModuleEntry:
    """One module of modules.json after the Transformer: its kind, name and folder."""

    kind: str  # Pooling, Dense, Normalize or Dropout
    name: str
    folder: Path


@dataclass(frozen=True)
class ModuleList:
    """What modules.json declares. `file` is None for a plain Hugging Face directory."""

    transformer: TransformerSettings
    entries: tuple[ModuleEntry, ...]
    file: Path | None


def read_json(file: Path, *, required: bool) -> Any:
    """A JSON file's value (None when absent and not required); ModelLoadError naming it."""
    if not file.is_file():
        if required:
            raise ModelLoadError(file, "file not found")
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(file, f"not valid JSON: {e}") from e


def read_json_object(file: Path, *, required: bool) -> dict[str, Any] | None:
    data = read_json(file, required=required)
    if data is not None and not isinstance(data, dict):
        raise ModelLoadError(file, "expected a JSON object")
    return data


def read_modules(directory: Path) -> ModuleList:
    """modules.json of `directory` (absent: a plain Hugging Face model)."""
    modules_file = directory / MODULES_JSON
    entries = read_json(modules_file, required=False)
    if entries is None:
        return ModuleList(TransformerSettings(directory, task=None), (), None)
    if not isinstance(entries, list) or not entries:
        raise ModelLoadError(modules_file, "expected a non-empty JSON list of modules")
    found: list[ModuleEntry] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise ModelLoadError(modules_file, f'module {i} has no "type"')
        name = str(entry.get("name", i))
        path = entry.get("path", "")
        if not isinstance(path, str) or path.startswith("/") or "\\" in path or ".." in path:
            raise ModelLoadError(modules_file, f"module {name!r} has a bad path {path!r}")
        kind = MODULE_TYPES.get(entry["type"])
        if kind is None:
            raise ModelLoadError(
                modules_file,
                f"module {name!r} ({path or 'the root'}) has type {entry['type']!r}, which is "
                "not supported (supported: Transformer, Pooling, Dense, Normalize, Dropout)",
            )
        found.append(ModuleEntry(kind, name, directory / path))
    order = [e.kind for e in found if e.kind != "Dropout"]
    served = (
        "what can be served is a Transformer first, then a Pooling, then Dense and Normalize "
        "modules (or a sequence-classification Transformer alone)"
    )
    if order[:1] != ["Transformer"] or "Transformer" in order[1:]:
        raise ModelLoadError(modules_file, f"modules {order}: {served}")
    first = next(e for e in found if e.kind == "Transformer")
    transformer = read_transformer_settings(first.folder / SBERT_CONFIG)
    if transformer.task == SEQUENCE_CLASSIFICATION:
        if order != ["Transformer"]:
            raise ModelLoadError(
                modules_file,
                f"modules {order}: a sequence-classification Transformer (a cross-encoder) is "
                "served alone, with its own head's logits",
            )
        return ModuleList(transformer, (), modules_file)
    if order[:2] != ["Transformer", "Pooling"]:
        raise ModelLoadError(modules_file, f"modules {order}: {served}")
    if "Pooling" in order[2:]:
        raise ModelLoadError(modules_file, "more than one Pooling module")
    return ModuleList(transformer, tuple(e for e in found if e is not first), modules_file)


def build_pipeline(modules: ModuleList, hidden_size: int) -> SentencePipeline:
    """The pooling, Dense and Normalize modules, for an encoder of `hidden_size`."""
    if modules.file is None:  # a plain Hugging Face model: what sentence-transformers does
        return SentencePipeline(Pooling(("mean",)), [], hidden_size)
    pooling: Pooling | None = None
    steps: list[Dense | Normalize] = []
    for e in modules.entries:
        if e.kind == "Pooling":
            pooling = read_pooling(e.folder / "config.json", e.name, hidden_size)
        elif e.kind == "Dense":
            steps.append(read_dense(e.folder, e.name))
        elif e.kind == "Normalize":
            steps.append(read_normalize(e.folder / "config.json", e.name))
    assert pooling is not None  # read_modules checked the order
    try:
        return SentencePipeline(pooling, steps, hidden_size)
    except ValueError as e:
        raise ModelLoadError(modules.file, str(e)) from e


def read_transformer_settings(file: Path) -> TransformerSettings:
    """sentence_bert_config.json (optional) of the Transformer module in file's folder."""
    raw = read_json_object(file, required=False) or {}
    task = raw.get("transformer_task", FEATURE_EXTRACTION)
    if task not in _TASK_OUTPUTS:
        raise ModelLoadError(
            file, f"transformer_task {task!r}: only {' and '.join(_TASK_OUTPUTS)} are served"
        )
    module_output, method_output = _TASK_OUTPUTS[task]
    output = raw.get("module_output_name", module_output)
    if output != module_output:
        raise ModelLoadError(
            file, f"module_output_name {output!r} is not {module_output} (transformer_task {task})"
        )
    for key in ("processing_kwargs", "query_length", "document_length", "query_expansion"):
        if raw.get(key):
            raise ModelLoadError(file, f"{key} {raw[key]!r} is not supported")
    modalities = raw.get("modality_config") or {"text": {}}
    text = modalities.get("text") if isinstance(modalities, dict) else None
    if (
        not isinstance(text, dict)
        or text.get("method", "forward") != "forward"
        or text.get("method_output_name", method_output) not in (method_output, None)
    ):
        raise ModelLoadError(file, f"modality_config text {text!r} is not supported")
    max_len = raw.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool)):
        raise ModelLoadError(file, f"max_seq_length must be an integer, got {max_len!r}")
    if isinstance(max_len, int) and max_len < 2:
        raise ModelLoadError(file, f"max_seq_length must be an integer >= 2, got {max_len!r}")
    lower = raw.get("do_lower_case", False)
    if not isinstance(lower, bool):
        raise ModelLoadError(file, f"do_lower_case must be true or false, got {lower!r}")
    return TransformerSettings(file.parent, max_len, lower, task)


def read_pooling(file: Path, name: str, hidden_size: int) -> Pooling:
    raw = read_json_object(file, required=True)
    assert raw is not None
    where = f"Pooling module {name!r}"
    dim = raw.get("embedding_dimension", raw.get("word_embedding_dimension", hidden_size))
    if dim != hidden_size:
        raise ModelLoadError(
            file, f"{where}: embedding_dimension {dim!r} is not the model's {hidden_size}"
        )
    if "pooling_mode" in raw:
        mode = raw["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else mode
        if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
            raise ModelLoadError(file, f"{where}: pooling_mode {mode!r} is not a mode or a list")
    else:
        modes = [mode for key, mode in _LEGACY_POOLING.items() if raw.get(key)] or ["mean"]
    unknown = [m for m in modes if m not in POOLING_MODES]
    unknown += [k for k in raw if k.startswith("pooling_mode_") and k not in _LEGACY_POOLING]
    if unknown:
        raise ModelLoadError(
            file,
            f"{where}: pooling {unknown} not supported (supported: {', '.join(POOLING_MODES)})",
        )
    if raw.get("include_prompt", True) is not True:
        raise ModelLoadError(
            file,
            f"{where}: include_prompt false (pooling that leaves out the prompt's tokens, as "
            "INSTRUCTOR models do) is not supported",
        )
    return Pooling(modes)


def read_dense(folder: Path, name: str) -> Dense:
    file = folder / "config.json"
    raw = read_json_object(file, required=True)
    assert raw is not None
    where = f"Dense module {name!r}"
    for key in ("module_input_name", "module_output_name"):
        if raw.get(key, _EMBEDDING) not in (_EMBEDDING, None):
            raise ModelLoadError(file, f"{where}: {key} {raw[key]!r} is not {_EMBEDDING}")
    n_in, n_out = raw.get("in_features"), raw.get("out_features")
    if not (_positive_int(n_in) and _positive_int(n_out)):
        raise ModelLoadError(file, f"{where}: in_features and out_features must be positive")
    activation = raw.get("activation_function", _DENSE_TANH)
    if activation not in ACTIVATIONS:
        raise ModelLoadError(
            file,
            f"{where}: activation_function {activation!r} is not supported "
            f"(supported: {', '.join(sorted(ACTIVATIONS))})",
        )
    bias, residual = raw.get("bias", True), raw.get("use_residual", False)
    if not isinstance(bias, bool) or not isinstance(residual, bool):
        raise ModelLoadError(file, f"{where}: bias and use_residual must be true or false")
    dense = Dense(n_in, n_out, bias=bias, activation=activation, use_residual=residual)
    tensors = read_safetensors(folder, what=where)
    names: dict[str, tuple[str, ...]] = {n: (n,) for n, _ in dense.named_parameters()}
    try:
        load_named(dense, tensors, names)
    except ValueError as e:
        raise ModelLoadError(folder / "model.safetensors", f"{where}: {e}") from e
    return dense


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_normalize(file: Path, name: str) -> Normalize:
    raw = read_json_object(file, required=False) or {}  # its folder may be absent: no settings
    for key in ("module_input_name", "module_output_name"):
        if raw.get(key, _EMBEDDING) not in (_EMBEDDING, None):
            raise ModelLoadError(
                file, f"Normalize module {name!r}: {key} {raw[key]!r} is not {_EMBEDDING}"
            )
    return Normalize()


def read_prompts(file: Path) -> Prompts:
    raw = read_json_object(file, required=False) or {}
    kind = raw.get("model_type", "SentenceTransformer")
    if kind not in ST_MODEL_TYPES:
        raise ModelLoadError(
            file, f"model_type {kind!r}: only {' and '.join(ST_MODEL_TYPES)} models are served"
        )
    prompts = raw.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise ModelLoadError(file, "prompts must map names to strings")
    default = raw.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelLoadError(
            file, f"default_prompt_name {default!r} is not one of the prompts {sorted(prompts)}"
        )
    return Prompts(dict(prompts), default, kind, score_activation(file, raw.get("activation_fn")))


def score_activation(file: Path, activation_fn: object) -> str | None:
    """A CrossEncoder's declared activation_fn as SCORE_ACTIVATIONS names it (None: not set)."""
    if activation_fn is None:
        return None
    if activation_fn not in SCORE_ACTIVATIONS:
        raise ModelLoadError(
            file,
            f"activation_fn {activation_fn!r} is not supported "
            f"(one of {sorted(SCORE_ACTIVATIONS)})",
        )
    return SCORE_ACTIVATIONS[str(activation_fn)]
