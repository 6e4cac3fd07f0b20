"""The real all-MiniLM-L6-v2 through the runner in NONE, FULL and PIECEWISE (CPU, mock graphs):
parity with sentence-transformers, isolation, and real replays."""

from __future__ import annotations

import pytest
import torch
from parity_sentences import SENTENCES
from runner_support import capture_due

from app.cudagraph import CacheConfig, CUDAGraphMode
from app.engine.runner import EmbeddingRunner, RunnerConfig
from models import default_model_path, load_sentence_encoder

MODES = [CUDAGraphMode.NONE, CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE]


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder()


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # the bundled directory only: never the network
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(default_model_path()), device="cpu")
        return st.encode(SENTENCES, convert_to_tensor=True, batch_size=8).float().cpu()


@pytest.fixture(scope="module")
def token_ids(encoder) -> list[list[int]]:
    ids = encoder.tokenizer.encode(SENTENCES)
    assert max(len(x) for x in ids) == 256 and min(len(x) for x in ids) == 3
    return ids


@pytest.fixture(scope="module", params=MODES, ids=lambda m: m.name)
def runner(request, encoder):
    cache = CacheConfig(capture_threshold=1)
    return EmbeddingRunner(encoder, RunnerConfig(mode=request.param, cache=cache))


def test_parity_with_sentence_transformers(runner, token_ids, reference):
    """First call (eager, captured after) and second call (replay) both match, cosine >= 0.9999."""
    for _ in range(2):
        res = runner.run(token_ids)
        capture_due(runner)
        assert res.embeddings.shape == (len(SENTENCES), 384)
        cos = torch.nn.functional.cosine_similarity(res.embeddings, reference)
        assert cos.min() >= 0.9999, (runner.mode.name, cos)
        torch.testing.assert_close(
            res.embeddings.norm(dim=1), torch.ones(len(SENTENCES)), atol=1e-5, rtol=0
        )
    if runner.mode.has_graphs():
        snap = runner.graphs.snapshot()
        assert snap.replays >= len(res.descriptors) and snap.captures >= len(res.descriptors)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_bfloat16_on_cpu_parity(mode, token_ids, reference):
    """bfloat16 weights and activations on the CPU (the `auto` dtype where the CPU multiplies
    bfloat16 natively) stay within cosine 0.999 of sentence-transformers in float32."""
    runner = EmbeddingRunner(load_sentence_encoder(dtype=torch.bfloat16), RunnerConfig(mode=mode))
    for _ in range(2):
        res = runner.run(token_ids)
        assert res.embeddings.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(res.embeddings, reference)
        assert cos.min() >= 0.999, (mode.name, cos)


def test_isolation_alone_vs_batched(runner, token_ids):
    """Same embedding (max abs diff <= 1e-5) alone, or batched with requests of other lengths
    (so padded to other buckets)."""
    for target in (0, 3, 12):
        alone = runner.run([token_ids[target]]).embeddings[0]
        for others in ([1, 2], [4, 5, 6, 7, 8, 9, 10, 11], [13, 19, 1]):
            batch = [token_ids[i] for i in others] + [token_ids[target]]
            res = runner.run(batch)
            diff = (res.embeddings[-1] - alone).abs().max().item()
            assert diff <= 1e-5, (runner.mode.name, target, others, diff, res.descriptors)


def test_repeated_shape_replays(runner, token_ids):
    batch = [token_ids[i] for i in (2, 10, 11, 14)]  # 4 requests of 13..19 tokens
    first = runner.run(batch)
    capture_due(runner)
    before = runner.graphs.snapshot()
    for _ in range(3):
        assert runner.run(batch).descriptors == first.descriptors
    after = runner.graphs.snapshot()
    if runner.mode is CUDAGraphMode.NONE:
        assert after.replays == after.captures == 0
    else:
        assert after.replays - before.replays == 3 * len(first.descriptors)
        assert after.captures == before.captures
        assert after.misses == before.misses
