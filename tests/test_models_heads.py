"""Rerankers and classifiers: the task a directory declares (and the caller's override), the
classification head of every family against `CrossEncoder.predict` and `transformers`, the
pair template's token types carried in the ids for BERT pairs, and what is refused (naming the
file).

Tiny random-weight cross-encoders built with `transformers` and saved by sentence-transformers
(tests/model_builders.py). Eager here; the runner in every graph mode is
tests/test_runner_rerank.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_builders import (
    ALBERT_GROUPED_CLASSIFIER,
    BERT_CLASSIFIER,
    BERT_RERANKER,
    DEBERTA_RERANKER,
    DEBERTA_V2_CLASSIFIER,
    PAIRS,
    TEXTS,
    XLMR_RERANKER,
    CrossSpec,
    TinySpec,
    ce_predict,
    hf_logits,
    offline_hub,
    st_encode,
    tiny_cross_encoder,
    tiny_model,
)
from safetensors.torch import load_file, save_file

from models import ModelLoadError, load_sentence_encoder

# One reranker per family (ModernBERT with each classifier pooling), and the two save layouts.
RERANKERS = [
    BERT_RERANKER,
    CrossSpec("bert", save="hf", seed=1),
    CrossSpec("roberta"),
    XLMR_RERANKER,
    CrossSpec("mpnet"),
    CrossSpec("distilbert"),
    CrossSpec("electra"),  # the ms-marco-electra layout
    DEBERTA_RERANKER,  # mxbai-rerank-v1's layout (DeBERTa-v3)
    CrossSpec("albert"),
    CrossSpec("modernbert"),
    CrossSpec("gte"),  # gte-multilingual-reranker-base's layout
]
CLASSIFIERS = [
    BERT_CLASSIFIER,
    CrossSpec("xlm-roberta", labels=("no", "yes"), save="hf"),
    CrossSpec("mpnet", labels=("a", "b", "c", "d")),
    CrossSpec("distilbert", labels=("NEGATIVE", "POSITIVE"), save="hf"),  # the SST-2 layout
    DEBERTA_V2_CLASSIFIER,
    ALBERT_GROUPED_CLASSIFIER,
    CrossSpec("gte", labels=("off", "on"), save="hf"),
    CrossSpec(
        "modernbert",
        labels=("x", "y"),
        config=(("classifier_pooling", "mean"), ("classifier_bias", True)),
    ),
]


@pytest.fixture
def copy_of(tmp_path: Path):
    def copy(spec: CrossSpec | TinySpec) -> Path:
        src = tiny_cross_encoder(spec) if isinstance(spec, CrossSpec) else tiny_model(spec)
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst

    return copy


def _edit_json(file: Path, **changes) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


# ---------------------------------------------------------------- parity
@pytest.mark.parametrize("spec", RERANKERS, ids=lambda s: s.label)
def test_reranker_scores_match_cross_encoder_predict(spec):
    folder = tiny_cross_encoder(spec)
    enc = load_sentence_encoder(folder)
    assert (enc.task, enc.labels, enc.dimensions) == ("rerank", ("LABEL_0",), 1)
    assert not enc.normalized and enc.prompts == {} and enc.default_prompt_name is None
    logits = enc.score(PAIRS)
    assert logits.shape == (len(PAIRS), 1) and logits.dtype == torch.float32
    scores, ref = torch.sigmoid(logits[:, 0]), ce_predict(folder, PAIRS)  # CE: sigmoid for one
    torch.testing.assert_close(scores, ref, atol=1e-4, rtol=0)
    assert torch.argsort(scores, descending=True).tolist() == (
        torch.argsort(ref, descending=True).tolist()
    )
    assert scores.std() > 0.02  # the pairs really differ: a wrong head could not hide
    torch.testing.assert_close(logits, hf_logits(folder, PAIRS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("spec", CLASSIFIERS, ids=lambda s: s.label)
def test_classifier_softmax_matches_transformers(spec):
    folder = tiny_cross_encoder(spec)
    enc = load_sentence_encoder(folder)
    assert (enc.task, enc.labels, enc.dimensions) == ("classify", spec.labels, len(spec.labels))
    assert enc.pooling == dict(spec.config).get("classifier_pooling", "cls")
    logits = enc.score(PAIRS)
    ref = hf_logits(folder, PAIRS)
    torch.testing.assert_close(logits.softmax(-1), ref.softmax(-1), atol=1e-4, rtol=0)
    assert logits.argmax(-1).tolist() == ref.argmax(-1).tolist()
    torch.testing.assert_close(logits, ce_predict(folder, PAIRS), atol=1e-4, rtol=0)  # no act.
    # A single text through a classifier: [CLS] text [SEP], all type 0, as transformers.
    texts = ["hello world", "the quick brown fox"]
    single = enc.embed(texts)  # the eager forward of single texts: rows of logits here
    torch.testing.assert_close(single, hf_single(folder, texts), atol=1e-4, rtol=0)


def hf_single(folder: Path, texts: list[str]) -> torch.Tensor:
    """The transformers model's logits of single texts (no pair)."""
    with offline_hub():
        import transformers as tf

        tok = tf.AutoTokenizer.from_pretrained(str(folder))
        model = tf.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            return model(**tok(texts, padding=True, return_tensors="pt")).logits.float()


def test_gte_reranker_as_the_original_code_saves_it(copy_of):
    """gte-multilingual-reranker-base on the hub: model_type "new", NewForSequenceClassification,
    tensors under `new.`: the same scores as transformers' port of it."""
    spec = CrossSpec("gte")
    folder = copy_of(spec)
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.update(
        model_type="new",
        architectures=["NewForSequenceClassification"],
        rope_theta=rope["rope_theta"],
        position_embedding_type="rope",
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    weights = folder / "model.safetensors"
    tensors = load_file(str(weights))
    save_file({k.replace("gte.", "new.", 1): v for k, v in tensors.items()}, str(weights))
    assert any(k.startswith("gte.") for k in tensors)
    enc = load_sentence_encoder(folder)
    assert (enc.family, enc.task) == ("new", "rerank")
    torch.testing.assert_close(
        enc.score(PAIRS), load_sentence_encoder(tiny_cross_encoder(spec)).score(PAIRS)
    )


def test_bfloat16_head_stays_float32():
    folder = tiny_cross_encoder(BERT_RERANKER)
    enc = load_sentence_encoder(folder, dtype=torch.bfloat16)
    assert enc.model.pipeline.out.weight.dtype == torch.float32
    logits = enc.score(PAIRS)
    assert logits.dtype == torch.float32
    ref = torch.logit(ce_predict(folder, PAIRS))
    torch.testing.assert_close(logits[:, 0], ref, atol=0.1, rtol=0.05)


# ---------------------------------------------------------------- token types
def test_pair_ids_carry_the_templates_types():
    enc = load_sentence_encoder(tiny_cross_encoder(BERT_RERANKER))
    stride = enc.tokenizer.type_stride
    assert stride == enc.model.encoder.config.vocab_size == enc.model.encoder.embeddings.type_stride
    encoded, folded = enc.tokenizer.encode_pairs(PAIRS), enc.tokenizer.pair_ids(PAIRS)
    assert any(any(t) for t in encoded.type_ids)  # BERT's template: the document is type 1
    for ids, types, got in zip(encoded.ids, encoded.type_ids, folded, strict=True):
        assert got == [i + t * stride for i, t in zip(ids, types, strict=True)]


def test_embeddings_split_the_types_back():
    """Padded (B, S) or packed (T,) alike: word(id) + position + type(t) of the folded ids."""
    enc = load_sentence_encoder(tiny_cross_encoder(BERT_RERANKER))
    emb = enc.model.encoder.embeddings
    stride = emb.type_stride
    ids = torch.tensor([[2, 7, 3, 9, 3], [2, 8, 3, 0, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]])
    positions = torch.arange(5)
    with torch.no_grad():
        got = emb(ids + types * stride, positions)
        want = emb.LayerNorm(
            emb.word_embeddings(ids)
            + emb.position_embeddings(positions + emb.position_offset)
            + emb.token_type_embeddings(types)
        )
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(
            emb((ids + types * stride).view(-1), positions.repeat(2)), want.view(10, -1)
        )


def test_a_separator_inside_the_query_stays_type_0():
    """A literal [SEP] in the query is the separator token, yet the template keeps the whole
    query at type 0: so do the ids, and the score is CrossEncoder's."""
    folder = tiny_cross_encoder(BERT_RERANKER)
    enc = load_sentence_encoder(folder)
    sep, stride = enc.tokenizer.token_to_id("[SEP]"), enc.tokenizer.type_stride
    pairs = [("a [SEP] b", "c"), ("a b", "c")]
    encoded = enc.tokenizer.encode_pairs(pairs)
    assert encoded.ids[0][2] == sep and encoded.type_ids[0] == [0, 0, 0, 0, 0, 1, 1]
    assert [i // stride for i in enc.tokenizer.pair_ids(pairs)[0]] == encoded.type_ids[0]
    scores = torch.sigmoid(enc.score(pairs)[:, 0])
    torch.testing.assert_close(scores, ce_predict(folder, pairs), atol=1e-4, rtol=0)


def test_token_types_change_bert_scores():
    """Without the types (all 0) the BERT reranker's scores are clearly off: the parity above
    depends on them."""
    folder = tiny_cross_encoder(BERT_RERANKER)
    enc = load_sentence_encoder(folder)
    enc.model.encoder.embeddings.type_stride = enc.tokenizer.type_stride = None
    diff = (torch.sigmoid(enc.score(PAIRS)[:, 0]) - ce_predict(folder, PAIRS)).abs().max()
    assert diff > 1e-2


def _reads_types(enc) -> bool:
    stride = getattr(enc.model.encoder.embeddings, "type_stride", None)
    assert stride == enc.tokenizer.type_stride  # the tokenizer folds them where the model reads
    return stride is not None


def test_types_are_read_only_by_heads_that_have_them():
    """BERT, ELECTRA, ALBERT and a DeBERTa-v2 with types read them; DeBERTa-v3 has none."""
    assert _reads_types(load_sentence_encoder(tiny_cross_encoder(BERT_RERANKER)))
    assert _reads_types(load_sentence_encoder(tiny_cross_encoder(CrossSpec("electra"))))
    assert _reads_types(load_sentence_encoder(tiny_cross_encoder(CrossSpec("albert"))))
    assert _reads_types(load_sentence_encoder(tiny_cross_encoder(DEBERTA_V2_CLASSIFIER)))
    others = ("roberta", "mpnet", "distilbert", "modernbert")
    for spec in (XLMR_RERANKER, DEBERTA_RERANKER, *(CrossSpec(family) for family in others)):
        assert not _reads_types(load_sentence_encoder(tiny_cross_encoder(spec))), spec.label
    assert not _reads_types(load_sentence_encoder(tiny_model(TinySpec("bert", "mean"))))
    # A cross-encoder served as an embedder keeps every token type 0 too.
    folder = tiny_cross_encoder(CrossSpec("bert", save="hf"))
    assert not _reads_types(load_sentence_encoder(folder, task="embed"))


def test_embedding_a_literal_separator_is_unchanged():
    """Embedding models keep type 0 everywhere: a text holding [SEP] embeds as
    sentence-transformers does."""
    folder = tiny_model(TinySpec("bert", "mean"))
    texts = ["hello [SEP] world", "a [SEP] b [SEP] c", *TEXTS[:3]]
    ours = load_sentence_encoder(folder).embed(texts)
    torch.testing.assert_close(ours, st_encode(folder, texts), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- task detection, override
def test_task_is_read_from_the_directory():
    assert load_sentence_encoder(tiny_cross_encoder(BERT_RERANKER)).task == "rerank"
    assert load_sentence_encoder(tiny_cross_encoder(CrossSpec("bert", save="hf"))).task == "rerank"
    assert load_sentence_encoder(tiny_cross_encoder(BERT_CLASSIFIER)).task == "classify"
    embedder = load_sentence_encoder(tiny_model(TinySpec("xlm-roberta", "mean")))
    assert (embedder.task, embedder.labels) == ("embed", ())


def test_id2label_of_one_label_is_a_reranker(copy_of):
    folder = copy_of(CrossSpec("bert", save="hf"))
    _edit_json(folder / "config.json", id2label={"0": "relevance"}, label2id={"relevance": 0})
    enc = load_sentence_encoder(folder)
    assert (enc.task, enc.labels) == ("rerank", ("relevance",))


def test_classify_of_a_reranker_is_served():
    folder = tiny_cross_encoder(BERT_RERANKER)
    enc = load_sentence_encoder(folder, task="classify")
    assert (enc.task, enc.labels, enc.dimensions) == ("classify", ("LABEL_0",), 1)
    torch.testing.assert_close(
        torch.sigmoid(enc.score(PAIRS)[:, 0]), ce_predict(folder, PAIRS), atol=1e-4, rtol=0
    )


def test_embed_of_a_plain_classifier_directory_mean_pools_the_body():
    """A Hugging Face *ForSequenceClassification directory asked to embed: what
    sentence-transformers makes of a plain directory (mean pooling), the head unused."""
    folder = tiny_cross_encoder(CrossSpec("bert", save="hf"))
    enc = load_sentence_encoder(folder, task="embed")
    assert (enc.task, enc.labels, enc.dimensions, enc.pooling) == ("embed", (), 32, "mean")
    assert enc.embed(["hello"]).shape == (1, 32)


def test_rerank_of_a_classifier_is_refused():
    folder = tiny_cross_encoder(BERT_CLASSIFIER)
    with pytest.raises(ModelLoadError, match="3 labels.*serve this model as classify") as ei:
        load_sentence_encoder(folder, task="rerank")
    assert ei.value.file == folder / "config.json"


@pytest.mark.parametrize("task", ["rerank", "classify"])
def test_a_head_task_of_an_embedder_is_refused(task):
    folder = tiny_model(TinySpec("bert", "mean"))
    with pytest.raises(ModelLoadError, match=f"no sequence-classification head to {task}") as ei:
        load_sentence_encoder(folder, task=task)
    assert ei.value.file == folder / "config.json"


def test_embed_of_a_cross_encoder_is_refused():
    folder = tiny_cross_encoder(BERT_RERANKER)
    with pytest.raises(ModelLoadError, match="cross-encoder .* cannot embed") as ei:
        load_sentence_encoder(folder, task="embed")
    assert ei.value.file == folder / "sentence_bert_config.json"


def test_an_unknown_task_is_a_value_error():
    with pytest.raises(ValueError, match="task must be one of embed, rerank, classify"):
        load_sentence_encoder(tiny_cross_encoder(BERT_RERANKER), task="score")


# ---------------------------------------------------------------- refusals
def test_cross_encoder_without_a_head_is_refused(copy_of):
    folder = copy_of(BERT_RERANKER)
    _edit_json(folder / "config.json", architectures=["BertModel"])
    with pytest.raises(ModelLoadError, match="a cross-encoder needs a") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "config.json"


def test_cross_encoder_model_type_on_an_embedding_pipeline_is_refused(copy_of):
    folder = copy_of(TinySpec("bert", "mean"))
    _edit_json(folder / "config_sentence_transformers.json", model_type="CrossEncoder")
    with pytest.raises(ModelLoadError, match="model_type 'CrossEncoder', but") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "config_sentence_transformers.json"


def test_modules_after_a_sequence_classification_transformer_are_refused(copy_of):
    folder = copy_of(BERT_RERANKER)
    modules = json.loads((folder / "modules.json").read_text())
    modules.append(
        {
            "idx": 1,
            "name": "1",
            "path": "1_Normalize",
            "type": "sentence_transformers.models.Normalize",
        }
    )
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelLoadError, match="sequence-classification Transformer") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "modules.json"


def test_cross_encoder_prompts_are_refused(copy_of):
    folder = copy_of(BERT_RERANKER)
    _edit_json(
        folder / "config_sentence_transformers.json",
        prompts={"query": "query: "},
        default_prompt_name="query",
    )
    with pytest.raises(ModelLoadError, match="prompts are not applied") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "config_sentence_transformers.json"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"architectures": ["RobertaForSequenceClassification"]}, "this head is not served"),
        ({"architectures": ["BertForSequenceClassification"], "model_type": "mpnet"}, "mpnet"),
        ({"id2label": {"0": "a", "2": "b"}}, "id2label"),
        ({"id2label": {"zero": "a"}}, "id2label keys"),
        ({"id2label": {"0": "a"}, "num_labels": 2}, "num_labels 2 but id2label has 1"),
    ],
)
def test_bad_head_config_is_refused(copy_of, changes, message):
    folder = copy_of(CrossSpec("bert", save="hf"))
    _edit_json(folder / "config.json", **changes)
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "config.json"


def test_missing_or_extra_head_weights_are_refused(copy_of):
    folder = copy_of(BERT_RERANKER)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    missing = {k: v for k, v in tensors.items() if not k.startswith("bert.pooler.")}
    save_file(missing, weights)
    with pytest.raises(ModelLoadError, match=r"missing tensors pooler\.dense\.bias") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == weights
    save_file({**tensors, "classifier.extra": torch.zeros(2)}, weights)
    with pytest.raises(ModelLoadError, match=r"unexpected tensors classifier\.extra"):
        load_sentence_encoder(folder)


def test_a_labels_mismatch_with_the_weights_is_refused(copy_of):
    folder = copy_of(CrossSpec("bert", save="hf"))
    _edit_json(folder / "config.json", id2label={"0": "a", "1": "b"}, label2id={"a": 0, "b": 1})
    with pytest.raises(ModelLoadError, match=r"wrong shapes classifier\.weight") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "model.safetensors"


def _set_pair_types(folder: Path, a: int, b: int) -> None:
    """Set the pair template's token types: `a` for [CLS] and the query, `b` for the rest."""
    file = folder / "tokenizer.json"
    tok = json.loads(file.read_text())
    for item in tok["post_processor"]["pair"]:
        piece = item.get("Sequence") or item["SpecialToken"]
        piece["type_id"] = a if piece.get("id") in ("A", "[CLS]") else b
    file.write_text(json.dumps(tok))


def test_any_pair_template_within_the_type_vocabulary_is_served(copy_of):
    """Type 1 from [CLS] on: the model reads the types tokenizer.json's template assigns (what
    text-embeddings-inference does; transformers 5's BertTokenizer rebuilds BERT's template
    instead), here against the transformers model given those same ids and types."""
    folder = copy_of(BERT_RERANKER)
    _set_pair_types(folder, 1, 1)
    enc = load_sentence_encoder(folder)
    encoded = enc.tokenizer.encode_pairs(PAIRS)
    assert {t for types in encoded.type_ids for t in types} == {1}
    S = max(map(len, encoded.ids))
    ids = torch.zeros((len(PAIRS), S), dtype=torch.int64)
    types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, (row, row_types) in enumerate(zip(encoded.ids, encoded.type_ids, strict=True)):
        ids[i, : len(row)], types[i, : len(row)] = torch.tensor(row), torch.tensor(row_types)
        mask[i, : len(row)] = 1
    with offline_hub():
        import transformers as tf

        model = tf.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
        with torch.no_grad():
            ref = model(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    torch.testing.assert_close(enc.score(PAIRS), ref.float(), atol=1e-4, rtol=0)
    assert (ref - hf_logits(folder, PAIRS)).abs().max() > 1e-2  # the types did change them


def test_a_pair_template_beyond_the_type_vocabulary_is_refused(copy_of):
    folder = copy_of(BERT_RERANKER)
    _set_pair_types(folder, 0, 2)
    with pytest.raises(ModelLoadError, match=r"token type 2, the model has 2 \(type_vocab") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "tokenizer.json"
