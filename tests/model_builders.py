"""Tiny sentence-transformers models of every family, built in the test with `transformers` and
saved with `sentence-transformers` (dev extras: never imported by models/), the reference
embeddings sentence-transformers computes from the saved directory, and a hub cache layout.
Tiny cross-encoders too (rerankers and classifiers: `CrossSpec`, `tiny_cross_encoder`), with the
scores `CrossEncoder.predict` and the `transformers` model give.

Models are 2 layers of 32 dims with small vocabularies, initialised wider than the families' own
0.02 (and every bias and LayerNorm perturbed), so a mistake in attention, positions or pooling
shows in the output instead of hiding in near-constant activations. Nothing touches the network:
the Hugging Face libraries only read local directories, offline (`offline_hub`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

FAMILIES = (
    "albert",
    "bert",
    "roberta",
    "xlm-roberta",
    "mpnet",
    "distilbert",
    "electra",
    "deberta-v2",
    "modernbert",
    "nomic_bert",
    "qwen3",
    "gemma3_text",
    "gte",
)
HIDDEN = 32
# (max_position_embeddings, own max_seq_length): roberta-like families use pad_token_id + 1
# rows of the table before position 0, so their limit is 2 below the table.
POSITIONS = 66
MAX_SEQ_LEN = 48

WORDS = (
    "the quick brown fox jumps over lazy dog hello world query passage document search "
    "graph cuda token embedding model sentence a an is of and to in"
).split()
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;"

# Texts: short, long enough to be truncated at MAX_SEQ_LEN, unknown characters, repeated words.
TEXTS = [
    "hello",
    "the quick brown fox jumps over the lazy dog",
    "a",
    "search query: cuda graph token",
    "Hello, World! Embedding models map text to vectors.",
    "document " * 60,
    "Café crème, naïve déjà vu — 東京 🍕",
    "the the the the",
    "model sentence embedding, 42 and 7",
    "",
]

# (query, document) pairs: short and long documents (one truncated at MAX_SEQ_LEN; queries stay
# short, so the document is what is cut, as CrossEncoder's longest-first also does), an empty
# one, unknown characters, and a literal [SEP] inside a document and inside a query (the pair
# template keeps the whole query at type 0 and the whole document at type 1 all the same).
RERANK_QUERY = "what is a cuda graph"
RERANK_DOCUMENTS = [
    "a cuda graph replays kernels",
    "hello",
    "",
    "the quick brown fox jumps over the lazy dog",
    "document " * 60,
    "Café crème, naïve déjà vu — 東京 🍕",
    "graph token embedding model sentence search query passage",
    "see [SEP] the separator inside a document",
]
PAIRS = [(RERANK_QUERY, d) for d in RERANK_DOCUMENTS] + [
    ("hello world", "the world"),
    ("a", "b"),
    ("search", "query passage document and more words of it"),
    ("what [SEP] is a graph", "a graph of kernels"),
]

# sentence-transformers 6 module types, and the classic ones most hub models have.
V6_TYPES = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Dense": "sentence_transformers.base.modules.dense.Dense",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
}
CLASSIC_POOLING_KEYS = {
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "mean": "pooling_mode_mean_tokens",
    "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}


@dataclass(frozen=True)
class TinySpec:
    """One tiny model: family, pipeline, directory layout, prompts.

    dense: None, or (out_features, activation: "tanh" | "identity", bias).
    dense_up: None, or the width of a Dense before `dense` (identity, no bias: EmbeddingGemma's
    pipeline widens, then narrows).
    layout: "v6" (as sentence-transformers 6 saves) or "classic" (rewritten to the layout most hub
    models have: sentence_transformers.models.* types, pooling_mode_*_tokens booleans,
    max_seq_length in sentence_bert_config.json).
    """

    family: str
    pooling: str | tuple[str, ...] = "mean"
    dense: tuple[int, str, bool] | None = None
    dense_up: int | None = None
    normalize: bool = False
    layout: str = "v6"
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt_name: str | None = None
    sharded: bool = False
    seed: int = 0

    @property
    def pooling_modes(self) -> tuple[str, ...]:
        return (self.pooling,) if isinstance(self.pooling, str) else self.pooling

    @property
    def label(self) -> str:
        parts = [self.family, "+".join(self.pooling_modes)]
        if self.dense_up:
            parts.append(f"up{self.dense_up}")
        if self.dense:
            parts.append(f"dense{self.dense[0]}-{self.dense[1]}")
        if self.normalize:
            parts.append("norm")
        if self.layout != "v6":
            parts.append(self.layout)
        if self.sharded:
            parts.append("sharded")
        return "-".join(parts)


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Hugging Face libraries offline for the duration, then as before.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, into a constant that transformers and
    sentence-transformers consult: it is imported here first (under the real environment) and
    the constant set and restored with the variable, so the rest of the session (e.g. a test of
    huggingface_hub's own HTTP client against the sidecar) is not left offline.
    """
    import huggingface_hub.constants as hub_constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


# ---------------------------------------------------------------- tokenizers
def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies hold)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def _unigram(specials: list[str], mask: str) -> list[tuple[str, float]]:
    """A sentencepiece unigram vocabulary (piece, score): the specials, the words, the characters,
    the mask token last."""
    pieces = [(t, 0.0) for t in specials]
    pieces += [(f"▁{w}", -1.0 - i / 10) for i, w in enumerate(WORDS)]
    return pieces + [(c, -8.0) for c in CHARS] + [("▁", -6.0), (mask, 0.0)]


def make_tokenizer(family: str) -> Any:
    """A small tokenizer of the family's own kind (transformers builds it from a vocabulary)."""
    import transformers as tf

    # ModernBERT's own is a BPE; NomicBERT's is BERT's.
    if family in ("bert", "distilbert", "electra", "modernbert", "nomic_bert"):
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
        vocab += list(CHARS) + [f"##{c}" for c in CHARS]
        kinds = {"distilbert": tf.DistilBertTokenizer, "electra": tf.ElectraTokenizer}
        kind = kinds.get(family, tf.BertTokenizer)
        return kind(vocab={t: i for i, t in enumerate(vocab)})
    if family == "gemma3_text":  # a byte-fallback BPE adding <bos> and <eos>, as EmbeddingGemma's
        vocab = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
        vocab += [f"<0x{b:02X}>" for b in range(256)]
        vocab += ["▁", *(f"▁{w}" for w in WORDS), *CHARS]
        return tf.GemmaTokenizer(
            vocab={t: i for i, t in enumerate(vocab)},
            merges=[],
            add_bos_token=True,
            add_eos_token=True,
        )
    if family == "mpnet":
        vocab = ["<s>", "<pad>", "</s>", "<unk>", "[UNK]", *WORDS]
        vocab += list(CHARS) + [f"##{c}" for c in CHARS] + ["<mask>"]
        return tf.MPNetTokenizer(vocab={t: i for i, t in enumerate(vocab)})
    if family in ("roberta", "qwen3"):
        byte_chars = _bytes_to_unicode()
        merges = [
            ("Ġ", "t"),
            ("h", "e"),
            ("Ġt", "he"),
            ("Ġ", "q"),
            ("Ġ", "a"),
            ("o", "r"),
            ("e", "n"),
        ]
        merged = ["Ġt", "he", "Ġthe", "Ġq", "Ġa", "or", "en"]
        if family == "qwen3":
            return _qwen3_tokenizer([*byte_chars, *merged], merges)
        vocab = ["<s>", "<pad>", "</s>", "<unk>", *byte_chars, *merged, "<mask>"]
        return tf.RobertaTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    if family in ("xlm-roberta", "gte"):  # gte-multilingual's is XLM-RoBERTa's
        return tf.XLMRobertaTokenizer(vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>"], "<mask>"))
    if family == "albert":  # a sentencepiece unigram, lower-cased, [CLS] / [SEP]
        pieces = _unigram(["<pad>", "<unk>", "[CLS]", "[SEP]"], "[MASK]")
        # With token types, as transformers 4's ALBERT tokenizer (the hub's were trained so);
        # transformers 5's leaves them out unless told.
        names = ["input_ids", "token_type_ids", "attention_mask"]
        return tf.AlbertTokenizer(vocab=pieces, model_input_names=names)
    if family == "deberta-v2":  # DeBERTa-v3's kind: a sentencepiece unigram, [CLS] / [SEP]
        return tf.DebertaV2Tokenizer(vocab=_unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]"], "[MASK]"))
    raise ValueError(family)


def _qwen3_tokenizer(vocab: list[str], merges: list[tuple[str, str]]) -> Any:
    """Qwen3-Embedding's kind: a byte-level BPE whose post-processor appends <|endoftext|> (also
    the pad token) to every text, padding on the left."""
    import transformers as tf
    from tokenizers import processors

    tok = tf.Qwen2Tokenizer(
        vocab={t: i for i, t in enumerate(vocab)},
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
    )
    end = "<|endoftext|>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {end}",
        pair=f"$A {end} $B:1 {end}:1",
        special_tokens=[(end, tok.convert_tokens_to_ids(end))],
    )
    return tok


# ---------------------------------------------------------------- models
def make_hf_model(
    family: str, vocab_size: int, seed: int, labels: tuple[str, ...] | None = None, **extra: Any
) -> Any:
    """The family's base model, or with `labels` its `*ForSequenceClassification` (id2label in
    that order); `extra` goes to the config."""
    import transformers as tf

    classify = labels is not None
    if classify:
        extra["id2label"] = dict(enumerate(labels))
        extra["label2id"] = {name: i for i, name in enumerate(labels)}

    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=POSITIONS,
        hidden_act="gelu",
    )
    common.update(extra)
    if family == "bert":
        cfg = tf.BertConfig(**common)
        model = (tf.BertForSequenceClassification if classify else tf.BertModel)(cfg)
    elif family == "roberta":
        cfg = tf.RobertaConfig(**common, type_vocab_size=1, pad_token_id=1)
        model = (tf.RobertaForSequenceClassification if classify else tf.RobertaModel)(cfg)
    elif family == "xlm-roberta":
        cfg = tf.XLMRobertaConfig(**common, type_vocab_size=1, pad_token_id=1)
        model = (tf.XLMRobertaForSequenceClassification if classify else tf.XLMRobertaModel)(cfg)
    elif family == "mpnet":
        cfg = tf.MPNetConfig(**common, pad_token_id=1)
        model = (tf.MPNetForSequenceClassification if classify else tf.MPNetModel)(cfg)
    elif family == "electra":  # embeddings narrower than the blocks: embeddings_project
        cfg = tf.ElectraConfig(**common, embedding_size=HIDDEN // 2)
        model = (tf.ElectraForSequenceClassification if classify else tf.ElectraModel)(cfg)
    elif family == "distilbert":
        cfg = tf.DistilBertConfig(
            vocab_size=vocab_size,
            dim=HIDDEN,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            max_position_embeddings=POSITIONS,
            activation="gelu",
            **extra,
        )
        model = (tf.DistilBertForSequenceClassification if classify else tf.DistilBertModel)(cfg)
    elif family == "albert":  # embeddings narrower than the blocks, one block for every layer
        cfg = tf.AlbertConfig(**{"embedding_size": HIDDEN // 2, **common})
        model = (tf.AlbertForSequenceClassification if classify else tf.AlbertModel)(cfg)
    elif family == "deberta-v2":
        # DeBERTa-v3's settings, with 4 buckets each way so that texts of the test lengths
        # reach the log-bucketed distances (the real models bucket beyond 128).
        v3 = dict(
            relative_attention=True,
            position_buckets=8,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            share_att_key=True,
            norm_rel_ebd="layer_norm",
            position_biased_input=False,
            type_vocab_size=0,
            layer_norm_eps=1e-7,
        )
        cfg = tf.DebertaV2Config(**{**common, **v3, **extra})
        model = (tf.DebertaV2ForSequenceClassification if classify else tf.DebertaV2Model)(cfg)
    elif family == "nomic_bert":  # transformers' port; it saves Nomic's own tensor names
        # A rotary base and LayerNorm eps of their own, so that reading them wrong shows.
        rope = {"rope_type": "default", "rope_theta": 10000.0}
        own = {"hidden_act": "silu", "rope_parameters": rope, "layer_norm_eps": 1e-2}
        cfg = tf.NomicBertConfig(**{**common, **own})
        model = tf.NomicBertModel(cfg)
    elif family == "gte":  # gte-multilingual-base's kind: one token type, a rotary base of its own
        rope = {"rope_type": "default", "rope_theta": 300.0}
        cfg = tf.GteConfig(**common, type_vocab_size=1, pad_token_id=1, rope_parameters=rope)
        model = (tf.GteForSequenceClassification if classify else tf.GteModel)(cfg)
    elif family == "qwen3":
        # Grouped-query attention (4 query heads over 2 key/value heads), heads wider than
        # hidden_size / heads, a rotary base and eps of their own: reading any wrong shows.
        del common["hidden_act"]
        own = dict(
            num_key_value_heads=2,
            head_dim=12,
            rms_norm_eps=1e-3,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        )
        cfg = tf.Qwen3Config(**{**common, **own, **extra})
        model = tf.Qwen3Model(cfg)
    elif family == "gemma3_text":
        # EmbeddingGemma's kind: bidirectional; 3 layers (local, local, global) with a window of
        # 4 + 1 tokens each way, well inside the texts; grouped-query heads wider than
        # hidden_size / heads; query scaling, rotary bases and eps of their own.
        del common["hidden_act"]
        own = dict(
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=12,
            query_pre_attn_scalar=20,
            rms_norm_eps=1e-3,
            sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            use_bidirectional_attention=True,
            hidden_activation="gelu_pytorch_tanh",
            pad_token_id=0,
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 5000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 300.0},
            },
        )
        cfg = tf.Gemma3TextConfig(**{**common, **own, **extra})
        model = tf.Gemma3TextModel(cfg)
    elif family == "modernbert":
        # 3 layers: global, local, global; a window of 4 tokens each way, well inside the texts.
        del common["hidden_act"]
        ids = dict(pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2, eos_token_id=3)
        cfg = tf.ModernBertConfig(
            **{**common, "num_hidden_layers": 3, "intermediate_size": 48},
            **ids,
            local_attention=8,
            global_attn_every_n_layers=2,
            hidden_activation="gelu",
        )
        model = (tf.ModernBertForSequenceClassification if classify else tf.ModernBertModel)(cfg)
    else:
        raise ValueError(family)
    wide_init(model, seed)
    return model.eval()


@torch.no_grad()
def wide_init(model: torch.nn.Module, seed: int, std: float = 0.3) -> None:
    """Weights with std `std`, LayerNorms around 1, every bias non-zero; MPNet's relative
    attention bias wider still, so a missing or misplaced bias changes the output clearly."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen)
        if "norm" in name.lower():  # LayerNorm, layer_norm, attn_norm, final_norm, ...
            p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
        elif "relative_attention_bias" in name:
            p.copy_(1.0 * noise)
        else:
            p.copy_(std * noise)


def build_tiny(spec: TinySpec, root: Path) -> Path:
    """Save `spec`'s model with sentence-transformers under `root`; returns the model folder."""
    with offline_hub():
        return _build_tiny(spec, root)


def _build_tiny(spec: TinySpec, root: Path) -> Path:
    import sentence_transformers as st
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    hf_dir, out = root / f"{spec.label}-hf", root / spec.label
    tok = make_tokenizer(spec.family)
    tok.model_max_length = MAX_SEQ_LEN
    model = make_hf_model(spec.family, len(tok), spec.seed)
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)

    modules: list[torch.nn.Module] = [Transformer(str(hf_dir))]
    modules.append(Pooling(HIDDEN, pooling_mode=spec.pooling))
    dim = HIDDEN * len(spec.pooling_modes)
    denses = [] if spec.dense_up is None else [(spec.dense_up, "identity", False)]
    denses += [] if spec.dense is None else [spec.dense]
    gen = torch.Generator().manual_seed(spec.seed + 1)
    for out_features, act, bias in denses:
        activation = torch.nn.Tanh() if act == "tanh" else torch.nn.Identity()
        dense = Dense(dim, out_features, bias=bias, activation_function=activation)
        with torch.no_grad():
            for p in dense.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
        modules.append(dense)
        dim = out_features
    if spec.normalize:
        modules.append(Normalize())
    sbert = st.SentenceTransformer(
        modules=modules,
        device="cpu",
        prompts=dict(spec.prompts) or None,
        default_prompt_name=spec.default_prompt_name,
    )
    sbert.save(str(out))
    if spec.sharded:
        shard_weights(out, model)
    if spec.layout == "classic":
        to_classic_layout(out)
    return out


def shard_weights(folder: Path, model: Any) -> None:
    """Replace model.safetensors with shards and their index (what save_pretrained writes for a
    model above its max_shard_size)."""
    tmp = folder / "_shards"
    model.save_pretrained(tmp, max_shard_size="20KB")
    index = tmp / "model.safetensors.index.json"
    assert index.is_file(), sorted(p.name for p in tmp.iterdir())
    (folder / "model.safetensors").unlink()
    for f in tmp.iterdir():
        if f.name.endswith(".safetensors") or f.name == index.name:
            shutil.move(str(f), folder / f.name)
    shutil.rmtree(tmp)


def to_classic_layout(folder: Path) -> None:
    """Rewrite a sentence-transformers 6 directory as older versions wrote it."""
    modules = json.loads((folder / "modules.json").read_text())
    classic = {v: f"sentence_transformers.models.{k}" for k, v in V6_TYPES.items()}
    for m in modules:
        m["type"] = classic[m["type"]]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LEN, "do_lower_case": False})
    )
    for m in modules:
        cfg_file = folder / m["path"] / "config.json"
        if m["type"].endswith("Pooling"):
            cfg = json.loads(cfg_file.read_text())
            mode = cfg["pooling_mode"]
            modes = [mode] if isinstance(mode, str) else mode
            classic_cfg = {"word_embedding_dimension": cfg["embedding_dimension"]}
            classic_cfg.update({k: m_ in modes for m_, k in CLASSIC_POOLING_KEYS.items()})
            cfg_file.write_text(json.dumps(classic_cfg))
        elif m["type"].endswith("Dense"):
            cfg = json.loads(cfg_file.read_text())
            keep = ("in_features", "out_features", "bias", "activation_function")
            cfg_file.write_text(json.dumps({k: cfg[k] for k in keep}))
        elif m["type"].endswith("Normalize"):
            shutil.rmtree(folder / m["path"], ignore_errors=True)  # old saves have no folder


_BUILT: dict[TinySpec | CrossSpec, Path] = {}
_ROOT: list[Path] = []
# Where models built elsewhere wait, one folder per label (`export_prebuilt`): the GPU machine
# has no transformers to build them with.
PREBUILT_ENV = "TINY_MODELS_DIR"


def _prebuilt(spec: TinySpec | CrossSpec) -> Path | None:
    root = os.environ.get(PREBUILT_ENV)
    folder = Path(root) / spec.label if root else None
    return folder if folder is not None and folder.is_dir() else None


def _session_root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="tiny-models-")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return _ROOT[0]


def tiny_model(spec: TinySpec) -> Path:
    """`spec`'s model folder, built once per test session (in a temporary directory removed at
    exit), whichever test file asks first; or the one prebuilt under $TINY_MODELS_DIR."""
    if spec not in _BUILT:
        _BUILT[spec] = _prebuilt(spec) or build_tiny(spec, _session_root())
    return _BUILT[spec]


# ---------------------------------------------------------------- cross-encoders
@dataclass(frozen=True)
class CrossSpec:
    """One tiny cross-encoder: a `*ForSequenceClassification` of `family` with `labels`.

    save: "cross-encoder" (sentence-transformers' `CrossEncoder(...).save`: modules.json with a
    sequence-classification Transformer, config_sentence_transformers.json of model_type
    CrossEncoder) or "hf" (`save_pretrained` of the model and its tokenizer only, as older
    cross-encoders on the hub are). config: extra config keys, e.g. ModernBERT's
    classifier_pooling.
    """

    family: str
    labels: tuple[str, ...] = ("LABEL_0",)
    save: str = "cross-encoder"
    config: tuple[tuple[str, Any], ...] = ()
    seed: int = 0

    @property
    def label(self) -> str:
        kind = "reranker" if len(self.labels) == 1 else f"classifier{len(self.labels)}"
        parts = [self.family, kind, self.save, *(f"{k}={v}" for k, v in self.config)]
        return "-".join(parts) + f"-s{self.seed}"


# The cross-encoders the service's route tests use: a BERT and an XLM-RoBERTa reranker (one
# label, sigmoid scores), and a 3-label BERT classifier (softmax over labels not in name order).
BERT_RERANKER = CrossSpec("bert")
XLMR_RERANKER = CrossSpec("xlm-roberta")
BERT_CLASSIFIER = CrossSpec("bert", labels=("positive", "negative", "neutral"))
# ALBERT with two groups of two shared blocks over three layers (layers 0 and 1 run group 0, layer
# 2 group 1: six blocks deep); the hub's ALBERTs have one group of one.
ALBERT_GROUPED_CLASSIFIER = CrossSpec(
    "albert",
    labels=("ham", "spam"),
    save="hf",
    config=(("num_hidden_layers", 3), ("num_hidden_groups", 2), ("inner_group_num", 2)),
)
# DeBERTa-v3 as mxbai-rerank and the nli-deberta-v3 cross-encoders have it; and the DeBERTa-v2
# settings v3 turned off: absolute positions, token types (read from the ids), narrower
# embeddings, c2p only with its own projection, distances clamped without buckets, tanh pooler.
DEBERTA_RERANKER = CrossSpec("deberta-v2")
DEBERTA_V2_CLASSIFIER = CrossSpec(
    "deberta-v2",
    labels=("contradiction", "entailment", "neutral"),
    save="hf",
    config=(
        ("position_biased_input", True),
        ("type_vocab_size", 2),
        ("embedding_size", HIDDEN // 2),
        ("pos_att_type", "c2p"),
        ("share_att_key", False),
        ("position_buckets", -1),
        ("max_relative_positions", 6),
        ("norm_rel_ebd", "none"),
        ("pooler_hidden_act", "tanh"),
    ),
)


def tiny_cross_encoder(spec: CrossSpec = BERT_RERANKER) -> Path:
    """`spec`'s saved directory, built once per test session (see `tiny_model`)."""
    if spec not in _BUILT:
        prebuilt = _prebuilt(spec)
        if prebuilt is None:
            with offline_hub():
                prebuilt = _build_cross(spec, _session_root())
        _BUILT[spec] = prebuilt
    return _BUILT[spec]


# The cross-encoders and embedders the `gpu` tests load: carried prebuilt to the GPU machine.
# The embedders are the families whose attention is more than a key mask: rotary (NomicBERT),
# rotary with sliding windows (ModernBERT), causal with grouped-query heads (Qwen3), grouped-query
# heads with windows (Gemma3), position scores (DeBERTa).
GPU_CROSS_ENCODERS = (BERT_RERANKER, DEBERTA_RERANKER)
GPU_EMBEDDERS = (
    TinySpec("nomic_bert", "mean", normalize=True),
    TinySpec("modernbert", "mean", normalize=True),
    TinySpec("qwen3", "lasttoken", normalize=True),
    TinySpec("gemma3_text", "mean", normalize=True),
    TinySpec("deberta-v2", "mean", normalize=True),
)


def export_prebuilt(dest: Path) -> list[Path]:
    """Build the `gpu` tests' cross-encoders and embedders and copy them under `dest`, one folder
    per label, for $TINY_MODELS_DIR on a machine without transformers."""
    dest.mkdir(parents=True, exist_ok=True)
    built = [(s.label, tiny_cross_encoder(s)) for s in GPU_CROSS_ENCODERS]
    built += [(s.label, tiny_model(s)) for s in GPU_EMBEDDERS]
    written = []
    for label, folder in built:
        target = dest / label
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        written.append(target)
    return written


def tiny_reranker() -> Path:
    """A BERT cross-encoder reranker (one label), as sentence-transformers saves it."""
    return tiny_cross_encoder(BERT_RERANKER)


def tiny_classifier() -> Path:
    """A 3-label BERT classifier (positive, negative, neutral), as sentence-transformers saves
    it."""
    return tiny_cross_encoder(BERT_CLASSIFIER)


def _build_cross(spec: CrossSpec, root: Path) -> Path:
    import sentence_transformers as st

    hf_dir, out = root / f"{spec.label}-hf", root / spec.label
    tok = make_tokenizer(spec.family)
    tok.model_max_length = MAX_SEQ_LEN
    if spec.family == "modernbert":  # as ModernBERT's own tokenizer: no token types
        tok.model_input_names = ["input_ids", "attention_mask"]
    model = make_hf_model(spec.family, len(tok), spec.seed, spec.labels, **dict(spec.config))
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    if spec.save == "hf":
        return hf_dir
    st.CrossEncoder(str(hf_dir), device="cpu").save(str(out))
    return out


def ce_predict(folder: Path, pairs: list[tuple[str, str]], **kwargs: Any) -> torch.Tensor:
    """`CrossEncoder.predict` of the saved directory (float32 on CPU): for one label the sigmoid
    of the logit (its default activation), for several the raw logits."""
    with offline_hub():
        from sentence_transformers import CrossEncoder

        model = CrossEncoder(str(folder), device="cpu")
        scores = model.predict(pairs, convert_to_tensor=True, batch_size=4, **kwargs)
    return scores.float().cpu()


def hf_logits(folder: Path, pairs: list[tuple[str, str]]) -> torch.Tensor:
    """The `transformers` model's logits (n, num_labels) float32 for the pairs, tokenized by its
    own tokenizer with the document truncated first."""
    with offline_hub():
        import transformers as tf

        tok = tf.AutoTokenizer.from_pretrained(str(folder))
        model = tf.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        batch = tok(
            [q for q, _ in pairs],
            [d for _, d in pairs],
            padding=True,
            truncation="only_second",
            max_length=MAX_SEQ_LEN,
            return_tensors="pt",
        )
        with torch.no_grad():
            return model(**batch).logits.float()


def st_encode(folder: Path, texts: list[str], **kwargs: Any) -> torch.Tensor:
    """sentence-transformers' own embeddings of `texts` from the saved directory (float32)."""
    with offline_hub():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(folder), device="cpu")
        emb = model.encode(texts, convert_to_tensor=True, batch_size=4, **kwargs)
    return emb.float().cpu()


def fill_hub_cache(hf_home: Path, repo_id: str, source: Path, commit: str) -> Path:
    """Lay `source`'s files out as the hub cache does (models--org--name/{refs/main,
    snapshots/<commit>/...}) under hf_home/hub; returns the snapshot folder."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
