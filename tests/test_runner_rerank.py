"""Rerankers and classifiers through the runner in NONE, FULL and PIECEWISE (CPU, mock graphs;
captures in the idle gaps, then replays): pairs go in as token ids only, rows of logits come
out, against `CrossEncoder.predict` and the `transformers` model, and each pair's score does not
depend on the other pairs of the call."""

from __future__ import annotations

import pytest
import torch
from model_builders import (
    ALBERT_GROUPED_CLASSIFIER,
    BERT_CLASSIFIER,
    BERT_RERANKER,
    DEBERTA_RERANKER,
    DEBERTA_V2_CLASSIFIER,
    GPU_CROSS_ENCODERS,
    PAIRS,
    RERANK_DOCUMENTS,
    RERANK_QUERY,
    XLMR_RERANKER,
    ce_predict,
    hf_logits,
    tiny_cross_encoder,
)
from runner_support import capture_due

from app.cudagraph import CacheConfig, CUDAGraphMode
from app.engine.runner import EmbeddingRunner, RunnerConfig
from models import load_sentence_encoder

MODES = [CUDAGraphMode.NONE, CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE]
GRAPH_MODES = [CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE]
RERANKERS = [BERT_RERANKER, XLMR_RERANKER, DEBERTA_RERANKER]
CLASSIFIERS = [BERT_CLASSIFIER, DEBERTA_V2_CLASSIFIER, ALBERT_GROUPED_CLASSIFIER]


@pytest.fixture(scope="module")
def loaded():
    """spec -> (encoder, reference): CrossEncoder.predict for rerankers, the transformers
    model's softmax for the classifier."""
    out = {}
    for spec in RERANKERS:
        folder = tiny_cross_encoder(spec)
        out[spec] = (load_sentence_encoder(folder), ce_predict(folder, PAIRS))
    for spec in CLASSIFIERS:
        folder = tiny_cross_encoder(spec)
        out[spec] = (load_sentence_encoder(folder), hf_logits(folder, PAIRS).softmax(-1))
    return out


def make_runner(encoder, mode: CUDAGraphMode) -> EmbeddingRunner:
    """Captures after one lookup, small batches so a call spans several sub-batches."""
    cache = CacheConfig(capture_threshold=1, idle_prewarm_top_k=0)
    return EmbeddingRunner(
        encoder, RunnerConfig(mode=mode, cache=cache, max_batch_size=4, max_num_tokens=128)
    )


def run_twice(runner: EmbeddingRunner, ids: list[list[int]]) -> list[torch.Tensor]:
    """A miss (eager; captured in the gap after), then a replay in the graph modes."""
    rows = []
    for _ in range(2):
        rows.append(runner.run(ids).embeddings)
        capture_due(runner)
    return rows


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("spec", RERANKERS, ids=lambda s: s.label)
def test_reranker_scores_match_cross_encoder(loaded, spec, mode):
    encoder, ref = loaded[spec]
    runner = make_runner(encoder, mode)
    assert runner.dimensions == 1
    ids = encoder.tokenizer.pair_ids(PAIRS)
    for rows in run_twice(runner, ids):
        assert rows.shape == (len(PAIRS), 1) and rows.dtype == torch.float32
        scores = torch.sigmoid(rows[:, 0])
        torch.testing.assert_close(scores, ref, atol=1e-4, rtol=0)
        order = torch.argsort(scores, descending=True).tolist()
        assert order == torch.argsort(ref, descending=True).tolist()
    if mode is not CUDAGraphMode.NONE:
        assert runner.graphs.snapshot().hits > 0  # the second call replayed


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("spec", CLASSIFIERS, ids=lambda s: s.label)
def test_classifier_softmax_matches_transformers(loaded, spec, mode):
    encoder, ref = loaded[spec]
    runner = make_runner(encoder, mode)
    ids = encoder.tokenizer.pair_ids(PAIRS)
    for rows in run_twice(runner, ids):
        assert rows.shape == (len(PAIRS), len(spec.labels))
        torch.testing.assert_close(rows.softmax(-1), ref, atol=1e-4, rtol=0)
        assert rows.argmax(-1).tolist() == ref.argmax(-1).tolist()


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_a_documents_score_does_not_depend_on_the_others(loaded, mode):
    """Each document alone, in the whole call, and in the call reversed: the same logit
    (float32), whatever bucket, batch or attention group it lands in."""
    encoder, _ = loaded[BERT_RERANKER]
    runner = make_runner(encoder, mode)
    pairs = [(RERANK_QUERY, d) for d in RERANK_DOCUMENTS]
    ids = encoder.tokenizer.pair_ids(pairs)
    together = run_twice(runner, ids)[-1][:, 0]
    backwards = run_twice(runner, ids[::-1])[-1][:, 0].flip(0)
    alone = torch.cat([run_twice(runner, [row])[-1][:, 0] for row in ids])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(backwards, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", GRAPH_MODES, ids=lambda m: m.name)
def test_prewarmed_ladder_serves_pairs(loaded, mode):
    """Captured from dummy rows of pad ids (all type 0): the replay still reads the pairs'
    token types from the ids it is given."""
    encoder, ref = loaded[BERT_RERANKER]
    runner = make_runner(encoder, mode)
    report = runner.prewarm(runner.ladder_descriptors())
    assert not report.failed and report.captured
    rows = runner.run(encoder.tokenizer.pair_ids(PAIRS)).embeddings
    torch.testing.assert_close(torch.sigmoid(rows[:, 0]), ref, atol=1e-4, rtol=0)
    snap = runner.graphs.snapshot()
    assert snap.hits > 0 and snap.misses == 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("spec", GPU_CROSS_ENCODERS, ids=lambda s: s.label)
def test_cuda_reranker_with_real_graphs(spec, mode):
    """On CUDA with real torch.cuda.CUDAGraph captures: the head, BERT's token types read from
    the ids and DeBERTa's position scores replay correctly (skipped where CUDA is absent).

    The reference is the eager CPU forward, which matches CrossEncoder.predict above: the GPU
    machine has neither transformers nor sentence-transformers (the models come prebuilt,
    $TINY_MODELS_DIR)."""
    folder = tiny_cross_encoder(spec)
    ref = torch.sigmoid(load_sentence_encoder(folder).score(PAIRS)[:, 0])
    encoder = load_sentence_encoder(folder, device="cuda")
    runner = make_runner(encoder, mode)
    for rows in run_twice(runner, encoder.tokenizer.pair_ids(PAIRS)):
        torch.testing.assert_close(torch.sigmoid(rows[:, 0]), ref, atol=1e-4, rtol=0)
    if mode.has_graphs():
        assert runner.graphs.snapshot().replays > 0
