"""The runner on CUDA with real graphs (marked `gpu`: skipped where CUDA is absent).

Same checks as the CPU tests: parity with sentence-transformers (float32, cosine >= 0.9999) in
NONE, FULL and PIECEWISE, isolation, real replays (torch.cuda.CUDAGraph, not the mock), results
copied out of graph memory; plus a float16 sanity check with a looser tolerance.
"""

from __future__ import annotations

import pytest
import torch
from parity_sentences import SENTENCES
from runner_support import capture_due

from app.cudagraph import CacheConfig, CUDAGraphMode
from app.engine.runner import EmbeddingRunner, RunnerConfig
from models import default_model_path, load_sentence_encoder

pytestmark = pytest.mark.gpu

MODES = [CUDAGraphMode.NONE, CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE]
GRAPH_MODES = [CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE]


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(default_model_path()), device="cpu")
        return st.encode(SENTENCES, convert_to_tensor=True, batch_size=8).float().cpu()


@pytest.fixture(scope="module")
def encoder():
    return load_sentence_encoder(device="cuda")


@pytest.fixture(scope="module")
def token_ids(encoder):
    return encoder.tokenizer.encode(SENTENCES)


def graph_types(runner: EmbeddingRunner) -> set[type]:
    entries = [runner.graphs.entry_for(d) for d in runner.graphs.get_cached_descriptors()]
    return {type(p.graph) for e in entries if e is not None for p in e.pieces}


def make_runner(encoder, mode, **kw) -> EmbeddingRunner:
    """Captures after one lookup (in the idle gap `capture_due` stands for)."""
    cache = CacheConfig(capture_threshold=1)
    return EmbeddingRunner(encoder, RunnerConfig(mode=mode, cache=cache, **kw))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_parity_float32(encoder, token_ids, reference, mode):
    runner = make_runner(encoder, mode)
    for _ in range(2):  # eager and captured after, then replay
        res = runner.run(token_ids)
        capture_due(runner)
        assert res.embeddings.device.type == "cpu" and res.embeddings.dtype == torch.float32
        cos = torch.nn.functional.cosine_similarity(res.embeddings, reference)
        assert cos.min() >= 0.9999, (mode.name, cos)
    if mode.has_graphs():
        assert graph_types(runner) == {torch.cuda.CUDAGraph}
        snap = runner.graphs.snapshot()
        assert snap.replays >= len(res.descriptors) and snap.memory_bytes > 0


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_isolation(encoder, token_ids, mode):
    runner = make_runner(encoder, mode)
    for target in (1, 8):
        alone = runner.run([token_ids[target]]).embeddings[0]
        for others in ([0, 13], [2, 3, 4, 5, 6, 7], [9, 10, 11]):
            capture_due(runner)
            res = runner.run([token_ids[i] for i in others] + [token_ids[target]])
            diff = (res.embeddings[-1] - alone).abs().max().item()
            assert diff <= 1e-5, (mode.name, target, others, diff)


@pytest.mark.parametrize("mode", GRAPH_MODES, ids=lambda m: m.name)
def test_cuda_replays_and_copy_out(encoder, token_ids, mode):
    runner = make_runner(encoder, mode)
    a = [token_ids[i] for i in (5, 6, 16)]
    b = [token_ids[i] for i in (11, 7, 10)]
    runner.run(a)
    capture_due(runner)
    first = runner.run(a)  # a replay
    kept = first.embeddings.clone()
    before = runner.graphs.snapshot()
    for _ in range(4):
        res = runner.run(b)
    after = runner.graphs.snapshot()
    assert res.descriptors == first.descriptors  # same padded shape: replays of one graph
    assert after.replays - before.replays == 4 * len(first.descriptors)
    assert after.captures == before.captures and after.misses == before.misses
    assert torch.equal(first.embeddings, kept)  # earlier results not overwritten by replays
    again = runner.run(a).embeddings
    assert (again - kept).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", GRAPH_MODES, ids=lambda m: m.name)
def test_cuda_prewarm_then_hits(encoder, token_ids, mode):
    runner = make_runner(encoder, mode, max_batch_size=8, max_num_tokens=2048)
    report = runner.prewarm(runner.ladder_descriptors())
    assert report.failed == [] and len(report.captured) == len(runner.ladder_descriptors())
    runner.run(token_ids)
    snap = runner.graphs.snapshot()
    assert snap.misses == 0 and snap.hits >= 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_cuda_half_precision_sanity(token_ids, reference, mode, dtype):
    enc = load_sentence_encoder(device="cuda", dtype=dtype)
    runner = make_runner(enc, mode)
    for _ in range(2):
        res = runner.run(token_ids)
        capture_due(runner)
    assert res.embeddings.dtype == torch.float32 and torch.isfinite(res.embeddings).all()
    cos = torch.nn.functional.cosine_similarity(res.embeddings, reference)
    assert cos.min() >= (0.999 if dtype == torch.float16 else 0.99), (mode.name, cos)
