"""The real all-MiniLM-L6-v2: tokenizer and eager model against sentence-transformers.

sentence-transformers is a test-only dependency: the reference is computed once per module.
(The runner's NONE/FULL/PIECEWISE parity is in tests/test_runner_minilm.py.)
"""

from __future__ import annotations

import pytest
import torch
from parity_sentences import SENTENCES

from models import PackedLayout, default_model_path, load_sentence_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder()


@pytest.fixture(scope="module")
def st_model():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # the bundled directory only: never the network
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(default_model_path()), device="cpu")


@pytest.fixture(scope="module")
def reference(st_model) -> torch.Tensor:
    emb = st_model.encode(SENTENCES, convert_to_tensor=True, batch_size=8)
    return emb.float().cpu()


def test_sentence_list_spans_the_truncation_limit(encoder):
    lens = [len(x) for x in encoder.tokenizer.encode(SENTENCES)]
    assert len(SENTENCES) >= 20
    assert min(lens) == 3 and max(lens) == 256
    assert sum(n == 256 for n in lens) >= 2


def test_tokenizer_matches_sentence_transformers(encoder, st_model):
    ours = encoder.tokenizer.encode(SENTENCES)
    features = st_model.tokenize(SENTENCES)
    for i, row in enumerate(ours):
        mask = features["attention_mask"][i].bool()
        assert row == features["input_ids"][i][mask].tolist(), SENTENCES[i]


def test_eager_padded_and_packed_match_sentence_transformers(encoder, reference):
    emb = encoder.embed(SENTENCES)
    cos = torch.nn.functional.cosine_similarity(emb, reference)
    assert cos.min() >= 0.9999, cos
    ids = encoder.tokenizer.encode(SENTENCES)
    lay = PackedLayout.build(
        [len(x) for x in ids], attention_width=384, device="cpu", dtype=torch.float32
    )
    with torch.inference_mode():
        packed = encoder.model.forward_packed(
            torch.tensor([t for row in ids for t in row]), lay.positions, lay
        )
    cos = torch.nn.functional.cosine_similarity(packed, reference)
    assert cos.min() >= 0.9999, cos
    assert (packed - emb).abs().max() <= 1e-5
