"""Naming a model by hub id, offline: a cache laid out by the test in a temporary HF_HOME, read
with HF_HUB_OFFLINE=1. Nothing here ever reaches the network."""

from __future__ import annotations

import logging

import pytest
import torch
from model_builders import TEXTS, TinySpec, fill_hub_cache, st_encode, tiny_model

from models import ModelLoadError, load_sentence_encoder, resolve_model
from models.hub import ALLOW_PATTERNS, hub_cache_dir, is_hub_id

SPEC = TinySpec("mpnet", "mean", normalize=True)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    # huggingface_hub freezes HF_HUB_OFFLINE at import: imported here first, under the real
    # environment, and its flag set for this test only (the rest of the session stays as it was).
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network, whatever the test does
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return home


def test_a_directory_is_returned_as_is(tmp_path):
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model(str(tmp_path), revision="main") == tmp_path  # ignored, with a warning
    with pytest.raises(ModelLoadError, match="model directory not found"):
        resolve_model(tmp_path / "absent")  # a Path is never a hub id
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="not a directory"):
        resolve_model(str(tmp_path / "file"))


@pytest.mark.parametrize(
    "name, hub",
    [
        ("BAAI/bge-small-en-v1.5", True),
        ("sentence-transformers/all-mpnet-base-v2", True),
        ("bert-base-uncased", True),
        ("./models/x", False),
        ("/abs/path", False),
        ("a/b/c", False),
        ("org/../x", False),
        ("", False),
    ],
)
def test_what_looks_like_a_hub_id(name, hub):
    assert is_hub_id(name) is hub


def test_hub_id_from_a_prefilled_cache(hf_home, caplog):
    snapshot = fill_hub_cache(hf_home, "tiny-org/tiny-mpnet", tiny_model(SPEC), COMMIT)
    assert hub_cache_dir() == hf_home / "hub"
    with caplog.at_level(logging.INFO, logger="models.hub"):
        assert resolve_model("tiny-org/tiny-mpnet") == snapshot
        assert resolve_model("tiny-org/tiny-mpnet", revision=COMMIT) == snapshot
    assert "tiny-org/tiny-mpnet" in caplog.text and "HF_HUB_OFFLINE=1" in caplog.text
    enc = load_sentence_encoder("tiny-org/tiny-mpnet")
    assert enc.name == "tiny-org/tiny-mpnet" and enc.family == "mpnet"
    ref = st_encode(tiny_model(SPEC), TEXTS)
    cos = torch.nn.functional.cosine_similarity(enc.embed(TEXTS), ref)
    assert cos.min() >= 0.99999


def test_hub_cache_env_overrides_hf_home(hf_home, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_dir() == tmp_path / "elsewhere"


def test_not_cached_offline_is_a_clear_error(hf_home):
    with pytest.raises(ModelLoadError) as ei:
        load_sentence_encoder("tiny-org/not-cached")
    assert str(ei.value.file) == "tiny-org/not-cached"
    assert "not in the Hugging Face cache" in str(ei.value) and "HF_HUB_OFFLINE=1" in str(ei.value)
    fill_hub_cache(hf_home, "tiny-org/tiny-mpnet", tiny_model(SPEC), COMMIT)
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache"):
        resolve_model("tiny-org/tiny-mpnet", revision="v2")  # a revision never fetched


def test_only_the_files_the_loader_reads_are_fetched():
    from fnmatch import fnmatch

    def fetched(path: str) -> bool:
        return any(fnmatch(path, p) for p in ALLOW_PATTERNS)

    wanted = [
        "config.json",
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
    ]
    unwanted = [
        "pytorch_model.bin",
        "2_Dense/pytorch_model.bin",
        "onnx/model.onnx",
        "onnx/config.json",
        "openvino/openvino_model.xml",
        "tf_model.h5",
        "rust_model.ot",
        "README.md",
    ]
    assert all(fetched(p) for p in wanted), [p for p in wanted if not fetched(p)]
    assert not any(fetched(p) for p in unwanted), [p for p in unwanted if fetched(p)]
