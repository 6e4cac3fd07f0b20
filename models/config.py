"""The fields of a Hugging Face `config.json` that change the computation, for every family
served, and how each family reads them: `EncoderConfig` for the families that share the
post-LayerNorm block, `ModernBertConfig` for ModernBERT (its own pre-LayerNorm block).

The post-LayerNorm families differ only in what is here:
- bert: absolute positions from 0, token types (always type 0 for single texts);
- roberta, xlm-roberta: absolute positions starting past the padding index (`pad_token_id + 1`),
  as Hugging Face numbers them, so `pad_token_id + 1` rows of the table are never used;
- mpnet: positions offset the same way (Hugging Face fixes its padding index at 1), no token
  types, and a relative position bias shared by every layer;
- distilbert: absolute positions from 0, no token types, its own names for the shape keys
  (`dim`, `n_layers`, `n_heads`, `hidden_dim`, `activation`) and LayerNorm eps fixed at 1e-12;
- electra: BERT's, with embeddings of `embedding_size` projected to the hidden size where the
  two differ;
- albert: BERT's, with embeddings of `embedding_size` always projected to the hidden size, and
  the blocks' weights shared: `num_hidden_groups` groups of `inner_group_num` blocks, each
  layer running its group's blocks.

`DebertaV2Config` is DeBERTa-v2 and v3 (config.json model_type "deberta-v2"): the post-LayerNorm
block with disentangled attention (content-to-position and position-to-content scores from a
table of relative position embeddings, log-bucketed beyond `position_buckets // 2`), absolute
positions only where `position_biased_input`, token types only where `type_vocab_size` > 0.

`NomicBertConfig` is NomicBERT (nomic-embed-text v1 and v1.5): BERT's post-LayerNorm layout with
rotary positions, a SwiGLU feed-forward and no biases in the projections, from a config.json
written either by Nomic's own code (GPT-2's key names: `n_embd`, `n_layer`, ...) or by
transformers' NomicBertConfig.

`Qwen3Config` is Qwen3 (the Qwen3-Embedding models): a causal decoder, its last token pooled,
with grouped-query attention and a head size of its own. `Gemma3Config` is Gemma3 as
EmbeddingGemma uses it: the same kind of attention made bidirectional, global and local layers.
`GteConfig` is GTE, as transformers (model_type "gte") or the original code ("new") writes it:
BERT's post-LayerNorm layout with rotary positions and a gated feed-forward.

`HeadConfig` is the sequence-classification head a `*ForSequenceClassification` config.json
declares (`read_head_config`): which head, its labels, and ModernBERT's head settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# config.json model_type of the families sharing the post-LayerNorm block (all served: below).
ENCODER_MODEL_TYPES = ("albert", "bert", "distilbert", "electra", "mpnet", "roberta", "xlm-roberta")
# config.json `hidden_act` values the feed-forward block implements.
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# Hugging Face's MPNetEmbeddings numbers positions past a padding index fixed at 1, whatever
# config.json's pad_token_id says.
MPNET_PADDING_IDX = 1
# Hugging Face's MPNetEncoder always buckets relative positions into 32 buckets (its
# compute_position_bias default), whatever relative_attention_num_buckets says; the table must
# hold at least that many rows.
MPNET_NUM_BUCKETS = 32
MPNET_MAX_DISTANCE = 128

# Defaults of the Hugging Face config classes, for keys a config.json may leave out.
_FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "albert": {
        "type_vocab_size": 2,
        "pad_token_id": 0,
        "hidden_act": "gelu_new",
        "embedding_size": 128,
    },
    "bert": {"type_vocab_size": 2, "pad_token_id": 0},
    "electra": {"type_vocab_size": 2, "pad_token_id": 0},
    "roberta": {"type_vocab_size": 2, "pad_token_id": 1},
    "xlm-roberta": {"type_vocab_size": 2, "pad_token_id": 1},
    "mpnet": {"type_vocab_size": 1, "pad_token_id": 1},
    "distilbert": {"type_vocab_size": 1, "pad_token_id": 0},
}
# DistilBertConfig's names for the shape keys (config.json holds these, not the usual ones).
_DISTILBERT_KEYS = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "hidden_dim": "intermediate_size",
    "activation": "hidden_act",
}


@dataclass(frozen=True)
class _Shape:
    """The shape keys every family's config.json holds (all required), and what derives from
    them."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_positions(self) -> int:
        """Tokens one sequence may hold (the position table, or rotary's trained length)."""
        return self.max_position_embeddings

    @property
    def attention_width(self) -> int:
        """Width of attention's output (heads x head size): the hidden size, except where a
        family sets its own head size (Qwen3, Gemma3)."""
        return self.num_attention_heads * self.head_dim


# The keys every config.json must hold (under the family's own names where it has them).
_REQUIRED = tuple(f.name for f in dataclasses.fields(_Shape))


@dataclass(frozen=True)
class EncoderConfig(_Shape):
    """Shapes and constants of one encoder. `family` is the config.json model_type."""

    family: str = "bert"
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"
    relative_attention_num_buckets: int = MPNET_NUM_BUCKETS  # mpnet only
    embedding_size: int | None = None  # electra, albert: the embeddings' width
    num_hidden_groups: int = 1  # albert: groups of shared blocks
    inner_group_num: int = 1  # albert: blocks per group

    def __post_init__(self) -> None:
        if self.family not in ENCODER_MODEL_TYPES:
            raise ValueError(
                f"model_type {self.family!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        names = (
            *_REQUIRED,
            "type_vocab_size",
            "relative_attention_num_buckets",
            "embedding_dim",
            "num_hidden_groups",
            "inner_group_num",
        )
        _check_post_ln_block(self, names)
        if self.max_positions < 2:
            raise ValueError(
                f"max_position_embeddings {self.max_position_embeddings} leaves "
                f"{self.max_positions} usable positions past the offset {self.position_offset}"
            )
        if self.relative_attention and self.relative_attention_num_buckets < MPNET_NUM_BUCKETS:
            raise ValueError(
                f"relative_attention_num_buckets must be >= {MPNET_NUM_BUCKETS}, "
                f"got {self.relative_attention_num_buckets}"
            )

    @property
    def embedding_dim(self) -> int:
        """Width of the embedding tables (ELECTRA and ALBERT project them up to hidden_size)."""
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def projects_embeddings(self) -> bool:
        """Whether a linear map takes the embeddings to hidden_size (ALBERT's always does)."""
        return self.embedding_dim != self.hidden_size or self.family == "albert"

    @property
    def block_modules(self) -> int:
        """Blocks with weights of their own (ALBERT shares them: groups x blocks per group)."""
        if self.family != "albert":
            return self.num_hidden_layers
        return self.num_hidden_groups * self.inner_group_num

    @property
    def block_order(self) -> tuple[int, ...]:
        """The block (of `block_modules`) each step of the forward runs: ALBERT's layer i runs
        the blocks of group int(i / (layers / groups)), as AlbertTransformer indexes them."""
        if self.family != "albert":
            return tuple(range(self.num_hidden_layers))
        L, G, inner = self.num_hidden_layers, self.num_hidden_groups, self.inner_group_num
        return tuple(int(i / (L / G)) * inner + j for i in range(L) for j in range(inner))

    @property
    def position_offset(self) -> int:
        """Row of the position table that position 0 (the first token) reads."""
        if self.family in ("albert", "bert", "distilbert", "electra"):
            return 0
        if self.family == "mpnet":
            return MPNET_PADDING_IDX + 1
        return self.pad_token_id + 1

    @property
    def max_positions(self) -> int:
        """Tokens one sequence may hold: the position table past the offset."""
        return self.max_position_embeddings - self.position_offset

    @property
    def token_types(self) -> bool:
        """Whether the embeddings add a token-type row (MPNet and DistilBERT have none)."""
        return self.family not in ("mpnet", "distilbert")

    @property
    def relative_attention(self) -> bool:
        """Whether attention scores get a relative position bias (MPNet)."""
        return self.family == "mpnet"

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> EncoderConfig:
        """From a config.json object; ValueError naming the key that is missing or refused."""
        family = _model_type(raw)
        if family not in ENCODER_MODEL_TYPES:
            raise ValueError(f"model_type {family!r} does not use the post-LayerNorm block")
        if family == "distilbert":
            missing = [k for k in _DISTILBERT_KEYS if k != "activation" and k not in raw]
            if missing:
                raise ValueError(f"missing keys {missing}")
            if raw.get("activation", "gelu") not in HIDDEN_ACTS:
                raise ValueError(
                    f"activation {raw['activation']!r} is not supported "
                    f"(one of {sorted(HIDDEN_ACTS)})"
                )
            raw = {**raw, **{ours: raw[k] for k, ours in _DISTILBERT_KEYS.items() if k in raw}}
            raw.pop("layer_norm_eps", None)  # not a DistilBERT key: its LayerNorms use 1e-12
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(
                f"position_embedding_type {raw['position_embedding_type']!r} is not supported "
                "(only 'absolute')"
            )
        _check_encoder(raw)
        values = {**_FAMILY_DEFAULTS[family], "family": family}
        fields = {f.name for f in dataclasses.fields(cls)} - {"family"}
        values.update({k: raw[k] for k in fields if k in raw and raw[k] is not None})
        if family not in ("electra", "albert"):
            values.pop("embedding_size", None)  # only their embeddings have their own width
        if family != "albert":  # the others' keys of these names (if any) mean nothing here
            values.pop("num_hidden_groups", None)
            values.pop("inner_group_num", None)
        return cls(**values)


@dataclass(frozen=True)
class ModernBertConfig(_Shape):
    """ModernBERT: rotary positions, GeGLU, pre-LayerNorm, layers of global attention and layers
    of local attention (a token sees the tokens at most local_attention // 2 away)."""

    layer_types: tuple[str, ...]  # "full_attention" or "sliding_attention", one per layer
    local_attention: int = 128
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_activation: str = "gelu"
    pad_token_id: int = 50283
    family: str = "modernbert"

    def __post_init__(self) -> None:
        for name in (*_REQUIRED, "local_attention"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads != 0 or self.head_dim % 2:
            raise ValueError(
                f"hidden_size {self.hidden_size} over num_attention_heads "
                f"{self.num_attention_heads} must give an even head size (rotary)"
            )
        _check_layer_types(self.layer_types, self.num_hidden_layers)
        if self.hidden_activation not in HIDDEN_ACTS:
            raise ValueError(
                f"hidden_activation {self.hidden_activation!r} is not supported "
                f"(one of {sorted(HIDDEN_ACTS)})"
            )
        pad = self.pad_token_id
        if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < self.vocab_size:
            raise ValueError(f"pad_token_id {pad!r} is outside the vocabulary")
        for theta in (self.global_rope_theta, self.local_rope_theta):
            if not isinstance(theta, int | float) or not theta > 0:
                raise ValueError(f"rope_theta must be > 0, got {theta!r}")

    @property
    def sliding_window(self) -> int:
        """How far a token of a local-attention layer sees, each way."""
        return self.local_attention // 2

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> ModernBertConfig:
        """From a config.json object, as transformers 4 (global_attn_every_n_layers,
        global_rope_theta, local_rope_theta) or 5 (layer_types, rope_parameters) writes it."""
        if _model_type(raw) != "modernbert":
            raise ValueError(f"model_type {raw['model_type']!r} is not modernbert")
        _check_encoder(raw)
        types = _layer_types(raw, "global_attn_every_n_layers", 3, global_first=True)
        thetas = _rope_thetas_by_layer_type(
            raw, raw.get("global_rope_theta", 160000.0), raw.get("local_rope_theta", 10000.0)
        )
        if raw.get("rope_scaling"):
            raise ValueError(f"rope_scaling {raw['rope_scaling']!r} is not supported")
        names = {f.name for f in dataclasses.fields(cls)} - {"family", "layer_types"}
        values = {k: raw[k] for k in names if k in raw and raw[k] is not None}
        values["global_rope_theta"] = thetas["full_attention"]
        values["local_rope_theta"] = thetas["sliding_attention"]
        try:
            return cls(layer_types=tuple(types), **values)
        except TypeError as e:  # layer_types not a list
            raise ValueError(f"layer_types {types!r}: {e}") from e


# The relative position scores DeBERTa-v2 computes. Another name (DeBERTa's paper also has p2p)
# is refused: transformers would leave it out silently.
DEBERTA_POS_ATT_TYPES = ("c2p", "p2c")


@dataclass(frozen=True)
class DebertaV2Config(_Shape):
    """DeBERTa-v2 / v3: BERT's post-LayerNorm block, with disentangled attention where
    `relative_attention`. Field names and defaults are DebertaV2Config's."""

    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    embedding_size: int | None = None  # the embeddings' width, projected up when not hidden_size
    position_biased_input: bool = True  # absolute position embeddings added to the tokens'
    relative_attention: bool = False
    position_buckets: int = -1  # > 0: relative distances log-bucketed into this many each way
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    pos_att_type: tuple[str, ...] = ()  # of DEBERTA_POS_ATT_TYPES
    share_att_key: bool = False  # positions projected by the content q/k projections
    norm_rel_ebd: str = "none"  # "layer_norm": the relative embeddings are layer-normed
    family: str = "deberta-v2"

    def __post_init__(self) -> None:
        _check_post_ln_block(self, (*_REQUIRED, "embedding_dim"))
        for name in ("type_vocab_size", "position_buckets", "max_relative_positions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        unknown = [t for t in self.pos_att_type if t not in DEBERTA_POS_ATT_TYPES]
        if unknown:
            raise ValueError(
                f"pos_att_type {list(self.pos_att_type)}: {unknown} not supported "
                f"(a combination of {', '.join(DEBERTA_POS_ATT_TYPES)})"
            )
        for name in ("position_biased_input", "relative_attention", "share_att_key"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.position_buckets == 1:  # half a bucket each way: nothing to take a log of
            raise ValueError("position_buckets must be >= 2 (or <= 0: no buckets), got 1")

    @property
    def embedding_dim(self) -> int:
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def token_types(self) -> bool:
        return self.type_vocab_size > 0

    @property
    def max_relative_distance(self) -> int:
        """The distance the log buckets stretch to (max_relative_positions, by default the
        position table's size)."""
        if self.max_relative_positions < 1:
            return self.max_position_embeddings
        return self.max_relative_positions

    @property
    def attention_span(self) -> int:
        """Relative embeddings each way: the table holds 2 * attention_span rows."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_distance

    @property
    def disentangled(self) -> bool:
        """Whether attention adds position scores (c2p and/or p2c)."""
        return self.relative_attention and bool(self.pos_att_type)

    @property
    def attention_scale(self) -> float:
        """What every score (content and position) is multiplied by: 1 / sqrt(d * (1 + the
        number of position score types)), as DisentangledSelfAttention scales."""
        types = sum(t in self.pos_att_type for t in DEBERTA_POS_ATT_TYPES)
        return float(self.head_dim * (1 + types)) ** -0.5

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> DebertaV2Config:
        """From a config.json object; ValueError naming what is refused."""
        if _model_type(raw) != "deberta-v2":
            raise ValueError(f"model_type {raw['model_type']!r} is not deberta-v2")
        _check_encoder(raw)
        if raw.get("conv_kernel_size", 0):
            raise ValueError(
                f"conv_kernel_size {raw['conv_kernel_size']}: the convolution after the first "
                "layer (deberta-v2-xlarge and -xxlarge) is not supported"
            )
        heads = raw.get("num_attention_heads")
        size = raw.get("attention_head_size")
        if size is not None and isinstance(heads, int) and size * heads != raw.get("hidden_size"):
            raise ValueError(
                f"attention_head_size {size} x num_attention_heads {heads} is not hidden_size"
            )
        att = raw.get("pos_att_type") or ()
        if isinstance(att, str):  # "p2c|c2p", as DebertaV2Config reads it
            att = [t.strip() for t in att.lower().split("|")]
        if not isinstance(att, list | tuple) or not all(isinstance(t, str) for t in att):
            raise ValueError(f"pos_att_type {att!r} is not a list of names")
        norm = raw.get("norm_rel_ebd", "none")
        if not isinstance(norm, str):
            raise ValueError(f"norm_rel_ebd {norm!r} is not a string")
        names = {f.name for f in dataclasses.fields(cls)} - {"family", "pos_att_type"}
        values = {k: raw[k] for k in names if k in raw and raw[k] is not None}
        values["norm_rel_ebd"] = norm
        return cls(pos_att_type=tuple(att), **values)

    @property
    def rel_norm(self) -> bool:
        """Whether the relative embeddings pass through a LayerNorm first."""
        return "layer_norm" in [x.strip() for x in self.norm_rel_ebd.lower().split("|")]


# Nomic's own config.json (its NomicBertConfig derives from GPT-2's) -> transformers' key names.
_NOMIC_GPT2_KEYS = {
    "n_embd": "hidden_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_inner": "intermediate_size",
    "n_positions": "max_position_embeddings",
    "layer_norm_epsilon": "layer_norm_eps",
}
# Settings of Nomic's own code that change the computation, and the one value served; the
# released nomic-embed-text models have exactly these.
_NOMIC_FIXED: dict[str, Any] = {
    "activation_function": "swiglu",
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_scaling_factor": None,
    "rotary_emb_scale_base": None,
    "qkv_proj_bias": False,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "prenorm": False,
    "parallel_block": False,
    "use_rms_norm": False,
    "causal": False,
}


@dataclass(frozen=True)
class NomicBertConfig(_Shape):
    """NomicBERT: word + token type embeddings and LayerNorm, then post-LayerNorm blocks with
    rotary positions (base `rope_theta`, every dimension), SwiGLU and no projection biases."""

    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    rope_theta: float = 1000.0
    hidden_act: str = "silu"  # the gate's activation: SwiGLU
    family: str = "nomic_bert"

    def __post_init__(self) -> None:
        _check_post_ln_block(self, (*_REQUIRED, "type_vocab_size"), activations=("silu",))
        if not isinstance(self.rope_theta, int | float) or not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if self.head_dim % 2:
            raise ValueError(f"the head size {self.head_dim} must be even (rotary)")

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> NomicBertConfig:
        """From a config.json object of either writer; ValueError naming what is refused."""
        if _model_type(raw) != "nomic_bert":
            raise ValueError(f"model_type {raw['model_type']!r} is not nomic_bert")
        if "n_embd" in raw:  # Nomic's own code wrote it
            for key, served in _NOMIC_FIXED.items():
                if key in raw and raw[key] != served:
                    raise ValueError(f"{key} {raw[key]!r} is not supported (only {served!r})")
            mapped = {
                ours: raw[k] for k, ours in _NOMIC_GPT2_KEYS.items() if raw.get(k) is not None
            }
            raw = {**raw, **mapped}
            raw["rope_theta"] = raw.get("rotary_emb_base", 1000.0)
            raw.pop("hidden_act", None)
        else:
            rope = raw.get("rope_parameters") or {}
            if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
                raise ValueError(f"rope_parameters {rope!r}: only default rotary")
            raw = {**raw, "rope_theta": rope.get("rope_theta", 1000.0)}
            size = raw.get("head_dim")
            heads, hidden = raw.get("num_attention_heads"), raw.get("hidden_size")
            if size is not None and isinstance(heads, int) and size * heads != hidden:
                raise ValueError(
                    f"head_dim {size} x num_attention_heads {heads} is not hidden_size"
                )
        _check_encoder(raw)
        names = {f.name for f in dataclasses.fields(cls)} - {"family"}
        return cls(**{k: raw[k] for k in names if k in raw and raw[k] is not None})


@dataclass(frozen=True)
class Qwen3Config(_Shape):
    """Qwen3 (the Qwen3-Embedding models): a causal decoder read as an embedder. Pre-RMSNorm
    blocks with grouped-query attention (`num_key_value_heads` key/value heads), RMSNorm on each
    query and key head, rotary positions, a SwiGLU feed-forward; a final RMSNorm."""

    num_key_value_heads: int = 0  # 0: as many as the query heads (from_hf fills it in)
    head_size: int = 0  # config.json head_dim; 0: hidden_size / num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    attention_bias: bool = False
    hidden_act: str = "silu"
    family: str = "qwen3"

    def __post_init__(self) -> None:
        _check_grouped_query(self, (), ("rms_norm_eps", "rope_theta"))
        if self.hidden_act != "silu":
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported (only 'silu')")

    @property
    def head_dim(self) -> int:
        return self.head_size or self.hidden_size // self.num_attention_heads

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> Qwen3Config:
        """From a config.json object as transformers 4 (rope_theta) or 5 (rope_parameters)
        writes it; ValueError naming what is refused (sliding windows, scaled rotary)."""
        if _model_type(raw) != "qwen3":
            raise ValueError(f"model_type {raw['model_type']!r} is not qwen3")
        _check_required(raw)
        if raw.get("use_sliding_window"):
            raise ValueError("use_sliding_window is set: only full attention is supported")
        types = raw.get("layer_types") or []
        if not isinstance(types, list) or set(types) - {"full_attention"}:
            raise ValueError(f"layer_types {types!r}: only full_attention layers are supported")
        if raw.get("rope_scaling"):
            raise ValueError(f"rope_scaling {raw['rope_scaling']!r} is not supported")
        rope = raw.get("rope_parameters") or {}
        if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters {rope!r}: only default rotary")
        values = {k: raw[k] for k in _REQUIRED}
        values["num_key_value_heads"] = raw.get("num_key_value_heads") or raw["num_attention_heads"]
        values["head_size"] = raw.get("head_dim") or 0
        values["rope_theta"] = rope.get("rope_theta", raw.get("rope_theta", 10000.0))
        for key in ("rms_norm_eps", "attention_bias", "hidden_act"):
            if raw.get(key) is not None:
                values[key] = raw[key]
        return cls(**values)


# What GTE's original code may say beside its shapes (under model_type "new", or "gte" in some
# checkpoints), and the value served: other values change the computation in ways not built here.
_GTE_NEW_FIXED = {
    "position_embedding_type": "rope",
    "layer_norm_type": "layer_norm",
    "logn_attention_scale": False,
    "pack_qkv": True,
}


@dataclass(frozen=True)
class GteConfig(_Shape):
    """GTE (gte-multilingual-base, gte-*-en-v1.5, their rerankers): BERT's post-LayerNorm layout
    with rotary positions (base `rope_theta`, every dimension), a gated feed-forward (GLU with
    the configured activation) and biases on the attention projections; token types only where
    `type_vocab_size` > 0. `ntk_factor`: the original code's fixed NTK scaling of the rotary
    frequencies (1: none). `family` is config.json's model_type: "gte" (transformers) or "new"
    (the original code); one checkpoint layout serves both."""

    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    hidden_act: str = "gelu"
    rope_theta: float = 160_000.0
    ntk_factor: float = 1.0
    family: str = "gte"

    def __post_init__(self) -> None:
        _check_post_ln_block(self, _REQUIRED)
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            raise ValueError(f"type_vocab_size must be >= 0, got {self.type_vocab_size!r}")
        for name in ("rope_theta", "ntk_factor"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.head_dim % 2:
            raise ValueError(f"the head size {self.head_dim} must be even (rotary)")

    @property
    def token_types(self) -> bool:
        return self.type_vocab_size > 0

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> GteConfig:
        """From a config.json object as transformers' GteConfig writes it (rope_parameters) or
        the original code (rope_theta, rope_scaling, and its settings; model_type "new", or
        "gte" in some checkpoints, Snowflake's arctic-embed-m-v2.0 for one): whichever keys are
        there are read, so none is left out silently. ValueError naming what is refused."""
        family = _model_type(raw)
        if family not in ("gte", "new"):
            raise ValueError(f"model_type {family!r} is not gte")
        for key, served in _GTE_NEW_FIXED.items():
            if key in raw and raw[key] != served:
                raise ValueError(f"{key} {raw[key]!r} is not supported (only {served!r})")
        # The original code's defaults where its keys are missing; transformers' port's else.
        original = family == "new"
        values: dict[str, Any] = {"family": family, "type_vocab_size": 0 if original else 1}
        theta = raw.get("rope_theta", 10000.0 if original else 160_000.0)
        rope = raw.get("rope_parameters") or {}
        if not isinstance(rope, dict) or rope.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters {rope!r}: only default rotary")
        values["rope_theta"] = rope.get("rope_theta", theta)
        scaling = raw.get("rope_scaling")
        if scaling is not None:
            kind = isinstance(scaling, dict) and (scaling.get("type") or scaling.get("rope_type"))
            if kind != "ntk" or scaling.get("mixed_b") is not None:
                raise ValueError(f"rope_scaling {scaling!r}: only fixed NTK scaling")
            values["ntk_factor"] = scaling.get("factor")
        _check_encoder(raw)
        for key in ("type_vocab_size", "layer_norm_eps", "pad_token_id", "hidden_act"):
            if raw.get(key) is not None:
                values[key] = raw[key]
        return cls(**{k: raw[k] for k in _REQUIRED}, **values)


# Families whose activations pass float16's largest value (65504), so a float16 forward gives
# inf and NaN (vLLM and transformers refuse float16 for them too).
FLOAT16_OVERFLOWS = ("gemma3_text",)
# hidden_activation values Gemma3's feed-forward gate implements (transformers' ACT2FN names).
GEMMA_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")


@dataclass(frozen=True)
class Gemma3Config(_Shape):
    """Gemma3 as EmbeddingGemma uses it: bidirectional attention, global layers and local layers
    that see the tokens less than `window` away, grouped-query attention with a norm on each
    query and key head, sandwich RMSNorms (before and after attention and feed-forward), GeGLU,
    embeddings scaled by sqrt(hidden_size)."""

    layer_types: tuple[str, ...]  # "full_attention" or "sliding_attention", one per layer
    num_key_value_heads: int = 0  # 0: as many as the query heads (from_hf fills it in)
    head_size: int = 256  # config.json head_dim
    rms_norm_eps: float = 1e-6
    sliding_window: int = 4096  # as config.json holds it (transformers halves it, see window)
    query_pre_attn_scalar: float = 256.0
    global_rope_theta: float = 1_000_000.0
    local_rope_theta: float = 10_000.0
    attention_bias: bool = False
    hidden_activation: str = "gelu_pytorch_tanh"
    family: str = "gemma3_text"

    def __post_init__(self) -> None:
        floats = ("rms_norm_eps", "query_pre_attn_scalar", "global_rope_theta", "local_rope_theta")
        _check_grouped_query(self, ("sliding_window",), floats)
        _check_layer_types(self.layer_types, self.num_hidden_layers)
        if self.hidden_activation not in GEMMA_ACTIVATIONS:
            raise ValueError(
                f"hidden_activation {self.hidden_activation!r} is not supported "
                f"(one of {list(GEMMA_ACTIVATIONS)})"
            )

    @property
    def head_dim(self) -> int:
        return self.head_size

    @property
    def window(self) -> int:
        """A token of a local layer sees the tokens less than this far away, each way
        (transformers' bidirectional window: sliding_window // 2 + 1, an exclusive bound)."""
        return self.sliding_window // 2 + 1

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> Gemma3Config:
        """From a config.json object as transformers 4 (rope_theta, rope_local_base_freq,
        sliding_window_pattern) or 5 (layer_types, rope_parameters) writes it; ValueError naming
        what is refused (causal attention, logit soft-capping, scaled rotary)."""
        if _model_type(raw) != "gemma3_text":
            raise ValueError(f"model_type {raw['model_type']!r} is not gemma3_text")
        _check_required(raw)
        if raw.get("use_bidirectional_attention") is not True:
            raise ValueError(
                "use_bidirectional_attention is not set: only EmbeddingGemma's bidirectional "
                "Gemma3 is served, not a causal language model"
            )
        if raw.get("attn_logit_softcapping") is not None:
            raise ValueError(
                f"attn_logit_softcapping {raw['attn_logit_softcapping']!r} is not supported"
            )
        if raw.get("rope_scaling"):
            raise ValueError(f"rope_scaling {raw['rope_scaling']!r} is not supported")
        types = _layer_types(raw, "sliding_window_pattern", 6, global_first=False)
        thetas = _rope_thetas_by_layer_type(
            raw, raw.get("rope_theta", 1_000_000.0), raw.get("rope_local_base_freq", 10_000.0)
        )
        values: dict[str, Any] = {k: raw[k] for k in _REQUIRED}
        values["num_key_value_heads"] = raw.get("num_key_value_heads") or raw["num_attention_heads"]
        values["head_size"] = raw.get("head_dim") or 256
        for key in (
            "rms_norm_eps",
            "sliding_window",
            "query_pre_attn_scalar",
            "attention_bias",
            "hidden_activation",
        ):
            if raw.get(key) is not None:
                values[key] = raw[key]
        values["global_rope_theta"] = thetas["full_attention"]
        values["local_rope_theta"] = thetas["sliding_attention"]
        try:
            return cls(layer_types=tuple(types), **values)
        except TypeError as e:  # layer_types not a list
            raise ValueError(f"layer_types {types!r}: {e}") from e


BodyConfig = (
    EncoderConfig
    | ModernBertConfig
    | DebertaV2Config
    | NomicBertConfig
    | Qwen3Config
    | Gemma3Config
    | GteConfig
)


# config.json model_type -> the config of a family with a body of its own.
_OWN_CONFIGS: dict[str, type[BodyConfig]] = {
    "deberta-v2": DebertaV2Config,
    "gemma3_text": Gemma3Config,
    "gte": GteConfig,
    "modernbert": ModernBertConfig,
    "new": GteConfig,
    "nomic_bert": NomicBertConfig,
    "qwen3": Qwen3Config,
}
# config.json model_type of every family served.
SUPPORTED_MODEL_TYPES = tuple(sorted({*ENCODER_MODEL_TYPES, *_OWN_CONFIGS}))


def read_body_config(raw: dict[str, Any]) -> BodyConfig:
    """The config of whichever family config.json names; ValueError saying what is refused."""
    family = _model_type(raw)
    if family in ENCODER_MODEL_TYPES:
        return EncoderConfig.from_hf(raw)
    config = _OWN_CONFIGS.get(family)
    if config is None:
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise ValueError(f"model_type {family!r} is not supported (supported: {supported})")
    return config.from_hf(raw)


def _model_type(raw: dict[str, Any]) -> str:
    family = raw.get("model_type")
    if not isinstance(family, str):
        raise ValueError("no model_type (a Hugging Face config.json names its model_type)")
    return family


def _check_post_ln_block(
    cfg: EncoderConfig | DebertaV2Config | NomicBertConfig | GteConfig,
    positive: tuple[str, ...],
    activations: tuple[str, ...] = HIDDEN_ACTS,
) -> None:
    """The rules every post-LayerNorm family's config obeys: `positive` names positive integers,
    heads divide the hidden size, a served activation, a pad id in the vocabulary, eps > 0."""
    for name in positive:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cfg.hidden_size % cfg.num_attention_heads != 0:
        raise ValueError(
            f"hidden_size {cfg.hidden_size} is not divisible by "
            f"num_attention_heads {cfg.num_attention_heads}"
        )
    if cfg.hidden_act not in activations:
        raise ValueError(
            f"hidden_act {cfg.hidden_act!r} is not supported (one of {sorted(activations)})"
        )
    pad = cfg.pad_token_id
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad < cfg.vocab_size:
        raise ValueError(f"pad_token_id {pad!r} is outside the vocabulary")
    if not isinstance(cfg.layer_norm_eps, int | float) or not cfg.layer_norm_eps > 0:
        raise ValueError(f"layer_norm_eps must be > 0, got {cfg.layer_norm_eps!r}")


def _check_grouped_query(
    cfg: Qwen3Config | Gemma3Config, ints: tuple[str, ...], floats: tuple[str, ...]
) -> None:
    """The rules Qwen3's and Gemma3's configs share: the shapes, key/value heads and `ints`
    positive integers, query heads a multiple of the key/value heads, an even head size
    (rotary), `attention_bias` a boolean, `floats` positive numbers."""
    for name in (*_REQUIRED, "num_key_value_heads", "head_dim", *ints):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(
            f"num_attention_heads {cfg.num_attention_heads} is not a multiple of "
            f"num_key_value_heads {cfg.num_key_value_heads}"
        )
    if cfg.head_dim % 2:
        raise ValueError(f"head_dim {cfg.head_dim} must be even (rotary)")
    if not isinstance(cfg.attention_bias, bool):
        raise ValueError(f"attention_bias must be true or false, got {cfg.attention_bias!r}")
    for name in floats:
        value = getattr(cfg, name)
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def _rope_thetas_by_layer_type(raw: dict[str, Any], full: Any, sliding: Any) -> dict[str, Any]:
    """The rotary base of each layer type: transformers 5's `rope_parameters` (one default-type
    entry per layer type) where config.json has them, else `full` and `sliding` (transformers
    4's keys, read by the caller). ValueError for another rotary type."""
    thetas = {"full_attention": full, "sliding_attention": sliding}
    rope = raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"rope_parameters {rope!r} is not an object")
    for kind, params in rope.items():
        if not isinstance(params, dict) or params.get("rope_type", "default") != "default":
            raise ValueError(f"rope_parameters {kind} {params!r}: only default rotary")
        thetas[kind] = params.get("rope_theta", thetas.get(kind))
    return thetas


def _check_encoder(raw: dict[str, Any]) -> None:
    for flag in ("is_decoder", "add_cross_attention"):
        if raw.get(flag):
            raise ValueError(f"{flag} is set: only encoders are served")
    _check_required(raw)


def _check_required(raw: dict[str, Any]) -> None:
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"missing keys {missing}")


def _layer_types(raw: dict[str, Any], pattern: str, every: int, *, global_first: bool) -> Any:
    """config.json's `layer_types` (transformers 5), else transformers 4's pattern: one global
    layer in every `pattern` layers (default `every`), the first of each run (ModernBERT) or the
    last (Gemma3). Checked by the config (`_check_layer_types`)."""
    types = raw.get("layer_types")
    if types is not None:
        return types
    every = raw.get(pattern, every)
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"{pattern} must be >= 1, got {every!r}")
    offset = 0 if global_first else 1
    layers = raw["num_hidden_layers"]
    return [
        "sliding_attention" if (i + offset) % every else "full_attention" for i in range(layers)
    ]


def _check_layer_types(types: tuple[str, ...], layers: int) -> None:
    """One layer type per layer, each global ("full_attention") or local ("sliding_attention")."""
    if len(types) != layers or not set(types) <= {"full_attention", "sliding_attention"}:
        raise ValueError(f"layer_types {list(types)} do not fit the layers")


# Tasks a model serves: sentence embeddings, one relevance logit per (query, document) pair,
# or one logit per label.
TASKS = ("embed", "rerank", "classify")
# config.json model_type -> the sequence-classification architectures whose head is served.
# RoBERTa and XLM-RoBERTa share one head class and one checkpoint layout.
HEAD_ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "albert": ("AlbertForSequenceClassification",),
    "bert": ("BertForSequenceClassification",),
    "roberta": ("RobertaForSequenceClassification", "XLMRobertaForSequenceClassification"),
    "xlm-roberta": ("XLMRobertaForSequenceClassification", "RobertaForSequenceClassification"),
    "mpnet": ("MPNetForSequenceClassification",),
    "distilbert": ("DistilBertForSequenceClassification",),
    "electra": ("ElectraForSequenceClassification",),
    "deberta-v2": ("DebertaV2ForSequenceClassification",),
    "modernbert": ("ModernBertForSequenceClassification",),
    "gte": ("GteForSequenceClassification",),
    "new": ("NewForSequenceClassification",),
}
_SEQUENCE_CLASSIFICATION = "ForSequenceClassification"
# Activations a ModernBERT head may name (config.json classifier_activation).
HEAD_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh")


@dataclass(frozen=True)
class HeadConfig:
    """A sequence-classification head: pooled first token (or mean) -> dense -> activation
    (-> LayerNorm) -> one logit per label.

    BERT: the pooler (dense + tanh on [CLS]), then `classifier`; ALBERT the same (its pooler is a
    bare `pooler` Linear). RoBERTa, XLM-RoBERTa, MPNet:
    `classifier.dense` + tanh on <s>, then `classifier.out_proj`. ELECTRA: the same layout with
    GELU. DistilBERT: `pre_classifier` + ReLU on [CLS], then `classifier`. DeBERTa-v2: BERT's
    layout with config.json's pooler_hidden_act (GELU by default). GTE: BERT's. ModernBERT: cls or
    mean pooling, `head.dense` + its activation + `head.norm`, then `classifier`.
    """

    family: str
    architecture: str
    labels: tuple[str, ...]  # id2label in label-id order
    pooling: str = "cls"
    activation: str = "tanh"
    dense_bias: bool = True
    norm: bool = False  # a LayerNorm after the activation (ModernBERT)
    norm_eps: float = 1e-5
    norm_bias: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def is_sequence_classifier(raw: dict[str, Any]) -> bool:
    """Whether config.json's first architecture is a `*ForSequenceClassification` (what
    transformers and sentence-transformers instantiate)."""
    archs = raw.get("architectures")
    return (
        isinstance(archs, list)
        and bool(archs)
        and isinstance(archs[0], str)
        and archs[0].endswith(_SEQUENCE_CLASSIFICATION)
    )


def read_head_config(raw: dict[str, Any]) -> HeadConfig | None:
    """The classification head config.json declares; None when its first architecture is not a
    `*ForSequenceClassification`. ValueError for a head that is not served or labels that do
    not add up."""
    if not is_sequence_classifier(raw):
        return None
    family = _model_type(raw)
    arch = raw["architectures"][0]
    if arch not in HEAD_ARCHITECTURES.get(family, ()):
        served = sorted({a for archs in HEAD_ARCHITECTURES.values() for a in archs})
        raise ValueError(
            f"architectures {arch!r} with model_type {family!r}: this head is not served "
            f"(served: {', '.join(served)})"
        )
    labels = _labels(raw)
    if family == "distilbert":
        return HeadConfig(family, arch, labels, activation="relu")
    if family == "electra":  # ElectraClassificationHead: GELU whatever hidden_act says
        return HeadConfig(family, arch, labels, activation="gelu")
    if family == "deberta-v2":  # ContextPooler: dense + pooler_hidden_act on [CLS]
        activation = raw.get("pooler_hidden_act", "gelu")
        if activation not in HEAD_ACTIVATIONS:
            raise ValueError(
                f"pooler_hidden_act {activation!r} is not supported (one of {HEAD_ACTIVATIONS})"
            )
        size = raw.get("pooler_hidden_size", raw.get("hidden_size"))
        if size != raw.get("hidden_size"):
            raise ValueError(f"pooler_hidden_size {size!r} differs from hidden_size")
        return HeadConfig(family, arch, labels, activation=activation)
    if family != "modernbert":
        return HeadConfig(family, arch, labels)
    pooling = raw.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        raise ValueError(f"classifier_pooling {pooling!r} is not supported (cls or mean)")
    activation = raw.get("classifier_activation", "gelu")
    if activation not in HEAD_ACTIVATIONS:
        raise ValueError(
            f"classifier_activation {activation!r} is not supported (one of {HEAD_ACTIVATIONS})"
        )
    flags = {k: raw.get(k, d) for k, d in (("classifier_bias", False), ("norm_bias", False))}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    eps = raw.get("norm_eps", 1e-5)
    if not isinstance(eps, int | float) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"norm_eps must be > 0, got {eps!r}")
    return HeadConfig(
        family,
        arch,
        labels,
        pooling=pooling,
        activation=activation,
        dense_bias=flags["classifier_bias"],
        norm=True,
        norm_eps=float(eps),
        norm_bias=flags["norm_bias"],
    )


def _labels(raw: dict[str, Any]) -> tuple[str, ...]:
    """id2label's names in label-id order; without id2label, transformers' defaults (LABEL_i for
    num_labels, 2 when not given either)."""
    count = raw.get("num_labels", raw.get("_num_labels"))
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise ValueError(f"num_labels must be a positive integer, got {count!r}")
    id2label = raw.get("id2label")
    if id2label is None:
        return tuple(f"LABEL_{i}" for i in range(2 if count is None else count))
    if not isinstance(id2label, dict) or not id2label:
        raise ValueError(f"id2label must be a non-empty object, got {id2label!r}")
    try:
        ids = {int(k): v for k, v in id2label.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"id2label keys must be label ids 0..n-1: {e}") from e
    if sorted(ids) != list(range(len(ids))) or not all(isinstance(v, str) for v in ids.values()):
        raise ValueError(f"id2label {id2label!r} must map the ids 0..n-1 to names")
    if count is not None and count != len(ids):
        raise ValueError(f"num_labels {count} but id2label has {len(ids)} labels")
    return tuple(ids[i] for i in range(len(ids)))
