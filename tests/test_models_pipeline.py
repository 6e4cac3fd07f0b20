"""The sentence-transformers pipeline: prompts, both modules.json layouts, the pooling modes in
both layouts, Dense with a residual, and the refusals that name the file and the module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_builders import HIDDEN, TEXTS, TinySpec, offline_hub, st_encode, tiny_model
from safetensors.torch import save_file

from models import POOLING_MODES, ModelLoadError, PackedLayout, load_sentence_encoder
from models.pipeline import Dense, Normalize, Pooling, SentencePipeline

E5_LIKE = TinySpec(
    "xlm-roberta",
    "mean",
    normalize=True,
    prompts=(("query", "query: "), ("passage", "passage: ")),
)
WITH_DEFAULT = TinySpec(
    "bert", "cls", prompts=(("query", "search query: "), ("doc", "")), default_prompt_name="query"
)


def cosine_ok(got: torch.Tensor, ref: torch.Tensor) -> None:
    cos = torch.nn.functional.cosine_similarity(got, ref)
    assert cos.min() >= 0.99999, cos
    torch.testing.assert_close(got.norm(dim=1), ref.norm(dim=1), atol=1e-4, rtol=0)


@pytest.fixture
def copy_of(tmp_path):
    def copy(spec: TinySpec) -> Path:
        return Path(shutil.copytree(tiny_model(spec), tmp_path / spec.label))

    return copy


# ---------------------------------------------------------------- prompts
def test_prompts_match_encode_with_prompt_name():
    folder = tiny_model(E5_LIKE)
    enc = load_sentence_encoder(folder)
    assert enc.prompts == {"query": "query: ", "passage": "passage: ", "document": ""}
    assert enc.default_prompt_name is None and enc.prompt(None) == ""
    for name in ("query", "passage"):
        ref = st_encode(folder, TEXTS, prompt_name=name)
        cosine_ok(enc.embed(TEXTS, prompt_name=name), ref)
        # The prompt is a text prefix: the app's way (prefix, then tokenize) is the same thing.
        cosine_ok(enc.embed([enc.prompts[name] + t for t in TEXTS]), ref)
    assert not torch.allclose(enc.embed(TEXTS[:2], "query"), enc.embed(TEXTS[:2], "passage"))


def test_default_prompt_applies_when_none_is_named():
    folder = tiny_model(WITH_DEFAULT)
    enc = load_sentence_encoder(folder)
    assert enc.default_prompt_name == "query" and enc.prompt(None) == "search query: "
    cosine_ok(enc.embed(TEXTS), st_encode(folder, TEXTS))  # ST applies its default too
    cosine_ok(enc.embed(TEXTS, prompt_name="doc"), st_encode(folder, TEXTS, prompt_name="doc"))
    with pytest.raises(KeyError, match="unknown prompt_name 'nope'.*doc, document, query"):
        enc.prompt("nope")


def test_bad_prompt_config_is_refused(copy_of):
    folder = copy_of(E5_LIKE)
    file = folder / "config_sentence_transformers.json"
    cfg = json.loads(file.read_text())
    file.write_text(json.dumps({**cfg, "default_prompt_name": "missing"}))
    with pytest.raises(ModelLoadError, match="default_prompt_name 'missing'") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == file
    file.write_text(json.dumps({**cfg, "model_type": "SparseEncoder"}))
    with pytest.raises(ModelLoadError, match="model_type 'SparseEncoder'"):
        load_sentence_encoder(folder)


# ---------------------------------------------------------------- layouts
def test_both_layouts_read_the_same_pipeline():
    """The same weights saved as sentence-transformers 6 writes them and in the classic layout."""
    v6 = TinySpec("mpnet", ("cls", "mean"), dense=(12, "tanh", True), normalize=True, seed=3)
    classic = TinySpec(**{**v6.__dict__, "layout": "classic"})
    a, b = load_sentence_encoder(tiny_model(v6)), load_sentence_encoder(tiny_model(classic))
    assert (a.pooling, a.dimensions, a.normalized) == (b.pooling, b.dimensions, b.normalized)
    assert a.pooling == "cls+mean" and a.dimensions == 12 and a.normalized
    torch.testing.assert_close(a.embed(TEXTS), b.embed(TEXTS), atol=0, rtol=0)
    modules = json.loads((tiny_model(classic) / "modules.json").read_text())
    assert modules[1]["type"] == "sentence_transformers.models.Pooling"
    pooling = json.loads((tiny_model(classic) / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_cls_token"] and "pooling_mode" not in pooling
    assert "max_seq_length" in json.loads(
        (tiny_model(classic) / "sentence_bert_config.json").read_text()
    )
    assert "max_seq_length" not in json.loads(
        (tiny_model(v6) / "sentence_bert_config.json").read_text()
    )


# ---------------------------------------------------------------- pooling, Dense, Normalize
@pytest.mark.parametrize("modes", [(m,) for m in POOLING_MODES] + [("mean", "max", "cls")])
def test_pooling_padded_and_packed_agree(modes):
    """Padding rows, sequence padding and token-bucket padding never change a row."""
    torch.manual_seed(0)
    lens = [5, 1, 9, 9, 3]
    pool = Pooling(modes)
    hidden = [torch.randn(n, 8) for n in lens]
    S, B = 12, len(lens) + 2
    padded = torch.full((B, S, 8), 1e4)  # garbage in every padding position
    mask = torch.zeros((B, S), dtype=torch.bool)
    mask[:, 0] = True
    for i, h in enumerate(hidden):
        padded[i, : len(h)] = h
        mask[i, : len(h)] = True
        mask[i, len(h) :] = False
    out = pool(padded, mask)[: len(lens)]
    lay = PackedLayout.build(lens, attention_width=8, device="cpu", dtype=torch.float32)
    packed = torch.cat([*hidden, torch.full((7, 8), 1e4)])  # 7 token-bucket padding rows
    torch.testing.assert_close(pool.pool_packed(packed, lay), out, atol=1e-5, rtol=0)
    assert out.shape == (len(lens), 8 * len(modes))
    # Each mode against its definition on the real tokens.
    refs = {
        "cls": lambda h: h[0],
        "lasttoken": lambda h: h[-1],
        "max": lambda h: h.max(0).values,
        "mean": lambda h: h.mean(0),
        "mean_sqrt_len_tokens": lambda h: h.sum(0) / len(h) ** 0.5,
        "weightedmean": lambda h: (
            (h * torch.arange(1, len(h) + 1).view(-1, 1)).sum(0) / (len(h) * (len(h) + 1) / 2)
        ),
    }
    ref = torch.stack([torch.cat([refs[m](h) for m in modes]) for h in hidden])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("out_features", [8, 6])
def test_dense_with_residual_matches_sentence_transformers(out_features):
    with offline_hub():
        from sentence_transformers.base.modules.dense import Dense as STDense

    torch.manual_seed(1)
    ref = STDense(8, out_features, use_residual=True)
    ours = Dense(
        8, out_features, bias=True, activation="torch.nn.modules.activation.Tanh", use_residual=True
    )
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref({"sentence_embedding": x})["sentence_embedding"])


def test_pipeline_dimensions_and_normalized():
    dense = Dense(2 * HIDDEN, 10, bias=False, activation="torch.nn.modules.linear.Identity")
    p = SentencePipeline(Pooling(("mean", "max")), [Normalize(), dense], HIDDEN)
    assert p.dimensions == 10 and not p.normalized  # a Dense after Normalize un-normalises
    with pytest.raises(ValueError, match="Dense expects 64 features, the pipeline gives 32"):
        SentencePipeline(Pooling(("mean",)), [dense], HIDDEN)


# ---------------------------------------------------------------- refusals
def _modules(folder: Path) -> list[dict]:
    return json.loads((folder / "modules.json").read_text())


def _write_modules(folder: Path, modules: list[dict]) -> None:
    (folder / "modules.json").write_text(json.dumps(modules))


def test_unknown_module_is_refused(copy_of):
    folder = copy_of(TinySpec("bert", "mean", normalize=True))
    modules = _modules(folder)
    modules.insert(
        2, {"idx": 9, "name": "9", "path": "9_LSTM", "type": "sentence_transformers.models.LSTM"}
    )
    _write_modules(folder, modules)
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "modules.json"
    assert "module '9' (9_LSTM) has type 'sentence_transformers.models.LSTM'" in str(ei.value)
    assert "not supported" in str(ei.value)


@pytest.mark.parametrize("path", ["../elsewhere", "/abs/1_Pooling", "1_Pooling/../../x"])
def test_module_folder_outside_the_directory_is_refused(copy_of, path):
    folder = copy_of(TinySpec("bert", "mean", normalize=True))
    modules = _modules(folder)
    modules[1]["path"] = path
    _write_modules(folder, modules)
    with pytest.raises(ModelLoadError, match="module '1' has a bad path") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "modules.json"


@pytest.mark.parametrize(
    "order, message",
    [
        (["Pooling", "Transformer"], "a Transformer first, then a Pooling"),
        (["Transformer"], "a Transformer first, then a Pooling"),
        (["Transformer", "Pooling", "Pooling"], "more than one Pooling"),
    ],
)
def test_module_order_is_checked(copy_of, order, message):
    folder = copy_of(TinySpec("bert", "mean", normalize=True))
    by_kind = {m["type"].rsplit(".", 1)[-1]: m for m in _modules(folder)}
    _write_modules(folder, [by_kind[k] for k in order])
    with pytest.raises(ModelLoadError, match=message):
        load_sentence_encoder(folder)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"embedding_dimension": HIDDEN, "pooling_mode": "median"},
            r"pooling \['median'\] not supported",
        ),
        (
            {"word_embedding_dimension": HIDDEN, "pooling_mode_median_tokens": True},
            "pooling_mode_median_tokens",
        ),
        (
            {"embedding_dimension": HIDDEN, "pooling_mode": "mean", "include_prompt": False},
            "include_prompt false",
        ),
        (
            {"embedding_dimension": 16, "pooling_mode": "mean"},
            "embedding_dimension 16 is not the model's 32",
        ),
    ],
)
def test_unsupported_pooling_is_refused(copy_of, config, message):
    folder = copy_of(TinySpec("bert", "mean", normalize=True))
    file = folder / "1_Pooling" / "config.json"
    file.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == file and "Pooling module '1'" in str(ei.value)


def test_classic_pooling_without_any_mode_is_mean(copy_of):
    folder = copy_of(TinySpec("bert", "mean"))
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN})
    )
    assert load_sentence_encoder(folder).pooling == "mean"


DENSE = TinySpec("roberta", "mean", dense=(16, "tanh", True))


@pytest.mark.parametrize(
    "patch, message",
    [
        (
            {"activation_function": "torch.nn.modules.activation.Softmax"},
            "activation_function 'torch.nn.modules.activation.Softmax' is not supported",
        ),
        ({"activation_function": "mypackage.Custom"}, "is not supported"),
        ({"module_input_name": "token_embeddings"}, "module_input_name 'token_embeddings'"),
        ({"in_features": 0}, "in_features and out_features must be positive"),
    ],
)
def test_unsupported_dense_is_refused(copy_of, patch, message):
    folder = copy_of(DENSE)
    file = folder / "2_Dense" / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **patch}))
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == file and "Dense module '2'" in str(ei.value)


def test_dense_without_activation_key_is_tanh(copy_of):
    folder = copy_of(DENSE)
    file = folder / "2_Dense" / "config.json"
    cfg = json.loads(file.read_text())
    del cfg["activation_function"]  # sentence-transformers' default
    file.write_text(json.dumps(cfg))
    enc = load_sentence_encoder(folder)
    cosine_ok(enc.embed(TEXTS), st_encode(tiny_model(DENSE), TEXTS))


def test_dense_weights_pickle_only_or_wrong(copy_of):
    folder = copy_of(DENSE)
    weights = folder / "2_Dense" / "model.safetensors"
    weights.rename(folder / "2_Dense" / "pytorch_model.bin")
    with pytest.raises(
        ModelLoadError, match="weights of Dense module '2' are only in pytorch_model.bin"
    ) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "2_Dense" / "pytorch_model.bin"
    save_file({"linear.weight": torch.zeros(16, 31), "linear.bias": torch.zeros(16)}, str(weights))
    with pytest.raises(
        ModelLoadError, match=r"linear.weight: expected \[16, 32\], got \[16, 31\]"
    ) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == weights


def test_normalize_on_token_embeddings_is_refused(copy_of):
    folder = copy_of(TinySpec("bert", "mean", normalize=True))
    file = folder / "2_Normalize" / "config.json"
    file.write_text(json.dumps({"module_input_name": "token_embeddings"}))
    with pytest.raises(ModelLoadError, match="Normalize module '2'") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == file


@pytest.mark.parametrize(
    "config, message",
    [
        ({"transformer_task": "fill-mask"}, "transformer_task"),
        ({"module_output_name": "scores"}, "module_output_name"),
        ({"query_length": 32}, "query_length"),
        ({"do_lower_case": "yes"}, "do_lower_case"),
        ({"modality_config": {"image": {"method": "forward"}}}, "modality_config"),
        ({"modality_config": {"text": {"method": "encode_text"}}}, "modality_config"),
    ],
)
def test_unsupported_transformer_settings(copy_of, config, message):
    folder = copy_of(TinySpec("bert", "mean", normalize=True))
    (folder / "sentence_bert_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file.name == "sentence_bert_config.json"


def test_do_lower_case_lowercases_like_sentence_transformers(copy_of):
    folder = copy_of(TinySpec("roberta", "mean"))  # byte-level BPE: case matters
    file = folder / "sentence_bert_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "do_lower_case": True}))
    texts = ["Hello World", "THE QUICK Brown fox"]
    enc = load_sentence_encoder(folder)
    assert enc.tokenizer.encode(texts) == enc.tokenizer.encode([t.lower() for t in texts])
    cosine_ok(enc.embed(texts), st_encode(folder, texts))
