"""Checkpoint weights: safetensors only (one file or shards), mapped onto the fused modules.

Nothing is ever unpickled: a directory that only holds a pickle checkpoint (pytorch_model.bin
and the like) is refused with a message saying so. Each family names its tensors in the
Hugging Face way; `encoder_checkpoint_names` maps every parameter of `TransformerEncoder` to the
checkpoint tensors it is made of (the fused QKV stacks three of them, rows q, k, v), and
`deberta_checkpoint_names` those of `DebertaEncoder`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from models.config import BodyConfig, DebertaV2Config, EncoderConfig
from models.errors import ModelLoadError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
# Checkpoint formats that are never read here (pickles can run code; the others need their own
# runtimes). Named in the refusal so the user knows what was found.
_FOREIGN = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "flax_model.msgpack",
    "model.ckpt.index",
    "model.onnx",
    "onnx/model.onnx",
)
# Prefixes a task model (e.g. BertForMaskedLM) puts before the base model's tensor names.
_BASE_PREFIXES = (
    "bert.",
    "roberta.",
    "mpnet.",
    "distilbert.",
    "electra.",
    "deberta.",
    "albert.",
    "gte.",
    "new.",
    "model.",
)
# Checkpoint tensors the encoder does not use: heads (DistilBERT's masked-LM head is vocab_*,
# ELECTRA's pre-training heads discriminator_* and generator_*, DeBERTa's lm_predictions.*,
# ALBERT's predictions.* and sop_classifier.*), the BERT pooler.
_IGNORED_PREFIXES = (
    "predictions.",
    "sop_classifier.",
    "pooler.",
    "cls.",
    "lm_head.",
    "lm_predictions.",
    "head.",
    "decoder.",
    "classifier.",
    "pre_classifier.",
    "vocab_",
    "discriminator_",
    "generator_",
)
_PARAMS = ("weight", "bias")
_IGNORED_KEYS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})


def read_safetensors(directory: Path, *, what: str = "the model") -> dict[str, torch.Tensor]:
    """Every tensor of `directory`'s model.safetensors, or of the shards its
    model.safetensors.index.json lists, on the CPU in the stored dtype.

    Raises ModelLoadError naming the file: none found (and which pickle was found instead, if
    any), an unreadable file, an index whose shards are missing or do not hold what it lists.
    """
    single, index = directory / SAFETENSORS, directory / SAFETENSORS_INDEX
    if single.is_file():
        return _load(single)
    if index.is_file():
        return _load_sharded(index)
    found = [name for name in _FOREIGN if (directory / name).is_file()]
    if found:
        raise ModelLoadError(
            directory / found[0],
            f"the weights of {what} are only in {', '.join(found)}; only safetensors are loaded "
            f"(pickle checkpoints are never loaded: they can run code). Convert them to "
            f"{SAFETENSORS}, e.g. with save_pretrained(..., safe_serialization=True)",
        )
    raise ModelLoadError(
        single,
        f"file not found (nor {SAFETENSORS_INDEX}): the weights of {what} are missing (pickle "
        "checkpoints such as pytorch_model.bin are never downloaded or loaded)",
    )


def _load(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file), device="cpu")
    except Exception as e:  # SafetensorError, OSError, ...: a truncated or foreign file
        raise ModelLoadError(file, f"cannot read safetensors: {e}") from e


def _load_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ModelLoadError(index, f"not a safetensors index (a JSON weight_map): {e}") from e
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(index, "weight_map must be a non-empty object")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
            raise ModelLoadError(index, f"shard name {shard!r} is not a file of this directory")
        file = index.parent / shard
        if not file.is_file():
            raise ModelLoadError(file, f"shard listed in {index.name} not found")
        tensors.update(_load(file))
    absent = sorted(name for name in weight_map if name not in tensors)
    if absent:
        raise ModelLoadError(index, f"tensors listed but in no shard: {_first(absent)}")
    return tensors


# Each family's checkpoint names for one block's tensors, under the prefix of block i (ALBERT's:
# block j of group g): our fused module -> its source tensors (qkv stacks three). roberta,
# xlm-roberta, electra: BERT's names.
_BLOCK_NAMES: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "albert": (
        "encoder.albert_layer_groups.{g}.albert_layers.{j}.",
        {
            "qkv": ("attention.query", "attention.key", "attention.value"),
            "attn_out": ("attention.dense",),
            "attn_norm": ("attention.LayerNorm",),
            "ffn_in": ("ffn",),
            "ffn_out": ("ffn_output",),
            "ffn_norm": ("full_layer_layer_norm",),
        },
    ),
    "bert": (
        "encoder.layer.{i}.",
        {
            "qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
            "attn_out": ("attention.output.dense",),
            "attn_norm": ("attention.output.LayerNorm",),
            "ffn_in": ("intermediate.dense",),
            "ffn_out": ("output.dense",),
            "ffn_norm": ("output.LayerNorm",),
        },
    ),
    "mpnet": (
        "encoder.layer.{i}.",
        {
            "qkv": ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
            "attn_out": ("attention.attn.o",),
            "attn_norm": ("attention.LayerNorm",),
            "ffn_in": ("intermediate.dense",),
            "ffn_out": ("output.dense",),
            "ffn_norm": ("output.LayerNorm",),
        },
    ),
    "distilbert": (
        "transformer.layer.{i}.",
        {
            "qkv": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
            "attn_out": ("attention.out_lin",),
            "attn_norm": ("sa_layer_norm",),
            "ffn_in": ("ffn.lin1",),
            "ffn_out": ("ffn.lin2",),
            "ffn_norm": ("output_layer_norm",),
        },
    ),
}


def _block_names(
    prefix: str, block: dict[str, tuple[str, ...]], count: int, inner: int = 1
) -> dict[str, tuple[str, ...]]:
    """`layers.{i}.<module>.{weight,bias}` of `count` blocks -> their checkpoint tensors, block
    i under `prefix` formatted with i (and ALBERT's group g and block j, `inner` per group)."""
    names: dict[str, tuple[str, ...]] = {}
    for i in range(count):
        src = prefix.format(i=i, g=i // inner, j=i % inner)
        for name, sources in block.items():
            for p in _PARAMS:
                names[f"layers.{i}.{name}.{p}"] = tuple(f"{src}{s}.{p}" for s in sources)
    return names


def encoder_checkpoint_names(cfg: EncoderConfig) -> dict[str, tuple[str, ...]]:
    """`TransformerEncoder` parameter -> the Hugging Face tensors it is made of (dim 0 stacked)."""
    names: dict[str, tuple[str, ...]] = {}
    emb = ["word_embeddings.weight", "position_embeddings.weight"]
    emb += ["LayerNorm.weight", "LayerNorm.bias"]
    if cfg.token_types:
        emb.append("token_type_embeddings.weight")
    names.update({f"embeddings.{n}": (f"embeddings.{n}",) for n in emb})
    if cfg.projects_embeddings:
        src = (
            "encoder.embedding_hidden_mapping_in"
            if cfg.family == "albert"
            else "embeddings_project"
        )
        names.update({f"embeddings.project.{p}": (f"{src}.{p}",) for p in _PARAMS})
    prefix, block = _BLOCK_NAMES.get(cfg.family, _BLOCK_NAMES["bert"])
    names.update(_block_names(prefix, block, cfg.block_modules, cfg.inner_group_num))
    if cfg.relative_attention:
        names["relative_bias.relative_attention_bias.weight"] = (
            "encoder.relative_attention_bias.weight",
        )
    return names


def deberta_checkpoint_names(cfg: DebertaV2Config) -> dict[str, tuple[str, ...]]:
    """`DebertaEncoder` parameter -> the Hugging Face tensors it is made of (dim 0 stacked)."""
    emb = ["word_embeddings.weight", "LayerNorm.weight", "LayerNorm.bias"]
    if cfg.position_biased_input:
        emb.append("position_embeddings.weight")
    if cfg.token_types:
        emb.append("token_type_embeddings.weight")
    if cfg.embedding_dim != cfg.hidden_size:
        emb.append("embed_proj.weight")
    names: dict[str, tuple[str, ...]] = {f"embeddings.{n}": (f"embeddings.{n}",) for n in emb}
    prefix, block = _BLOCK_NAMES["bert"]
    block = {**block, "qkv": tuple(f"attention.self.{p}_proj" for p in ("query", "key", "value"))}
    if cfg.relative_attention and not cfg.share_att_key:  # the positions' own projections
        kinds = (("c2p", "pos_key_proj"), ("p2c", "pos_query_proj"))
        block.update({n: (f"attention.self.{n}",) for t, n in kinds if t in cfg.pos_att_type})
    names.update(_block_names(prefix, block, cfg.num_hidden_layers))
    if cfg.relative_attention:
        names["rel_embeddings.weight"] = ("encoder.rel_embeddings.weight",)
        if cfg.rel_norm:
            names.update({f"rel_norm.{p}": (f"encoder.LayerNorm.{p}",) for p in _PARAMS})
    return names


def strip_base_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensor names of a task model ("bert.encoder...", "roberta.embeddings...") as the base
    model names them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        for prefix in _BASE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def _ignored_by_encoder(key: str) -> bool:
    return key in _IGNORED_KEYS or key.startswith(_IGNORED_PREFIXES)


@torch.no_grad()
def load_encoder_weights(model: nn.Module, cfg: BodyConfig, tensors: dict[str, torch.Tensor]):
    """Copy a Hugging Face checkpoint of `cfg`'s family into its encoder (`TransformerEncoder`,
    `DebertaEncoder`, or `ModernBertEncoder` and `NomicBertEncoder`, whose parameters carry the
    checkpoint's own names), casting to its dtype. ValueError listing the missing, unexpected
    and mis-shaped tensors."""
    tensors = strip_base_prefix(tensors)  # a new dict: the caller's is left as it was
    if isinstance(cfg, EncoderConfig):
        names = encoder_checkpoint_names(cfg)
    elif isinstance(cfg, DebertaV2Config):
        names = deberta_checkpoint_names(cfg)
        if not cfg.position_biased_input:  # some checkpoints keep the unused table
            tensors.pop("embeddings.position_embeddings.weight", None)
    else:
        names = {n: (n,) for n, _ in model.named_parameters()}
    load_named(model, tensors, names, _ignored_by_encoder)


@torch.no_grad()
def load_named(
    module: nn.Module,
    tensors: dict[str, torch.Tensor],
    names: dict[str, tuple[str, ...]],
    ignored: Callable[[str], bool] = lambda _key: False,
) -> None:
    """Fill every parameter of `module` from `tensors`: `names` maps a parameter to its source
    tensors, stacked along dim 0. Every parameter must be covered and every tensor used (or
    `ignored`); ValueError lists what is missing, unexpected, mis-shaped or not floating point."""
    params = dict(module.named_parameters())
    uncovered = sorted(set(params) - set(names))
    assert not uncovered, f"parameters without a checkpoint name: {uncovered}"
    expected: dict[str, tuple[int, ...]] = {}
    for name, sources in names.items():
        shape = tuple(params[name].shape)
        expected.update({s: (shape[0] // len(sources), *shape[1:]) for s in sources})
    missing = sorted(k for k in expected if k not in tensors)
    unexpected = sorted(k for k in tensors if k not in expected and not ignored(k))
    wrong = [
        f"{k}: expected {list(shape)}, got {list(tensors[k].shape)}"
        for k, shape in expected.items()
        if k in tensors and tuple(tensors[k].shape) != shape
    ]
    not_float = [k for k in expected if k in tensors and not tensors[k].is_floating_point()]
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
    for name, sources in names.items():
        parts = [tensors[s] for s in sources]
        params[name].copy_(parts[0] if len(parts) == 1 else torch.cat(parts))


def _first(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
