"""The rerank benchmark end to end, small: the real sidecar and the CrossEncoder baseline as
real processes with the toy cross-encoder, driven by the load generator process (plumbing, not
speed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from model_builders import tiny_reranker

from bench.loadgen import check_rerank_answer, make_rerank_requests
from bench.report import ResultsDir
from bench.rerank import CE, RERANK_QUICK, RerankOptions, run_rerank_bench
from bench.service import SIDECAR


def test_rerank_requests_are_fixed_and_in_range() -> None:
    reqs = make_rerank_requests(8, seed=0)
    assert reqs == make_rerank_requests(8, seed=0)
    assert all(20 <= len(r["texts"]) <= 100 and r["query"] for r in reqs)


def test_rerank_answer_check() -> None:
    good = json.dumps([{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}]).encode()
    assert check_rerank_answer(200, good, 2) is None
    assert check_rerank_answer(200, good, 3) is not None
    assert check_rerank_answer(500, good, 2) is not None
    twice = json.dumps([{"index": 0, "score": 0.9}, {"index": 0, "score": 0.1}]).encode()
    assert check_rerank_answer(200, twice, 2) is not None


def test_rerank_bench_toy_sidecar_and_crossencoder(tmp_path: Path) -> None:
    res = ResultsDir(tmp_path / "out")
    preset = replace(RERANK_QUICK, requests=6, warmup_requests=2, num_requests=8)
    opts = RerankOptions(preset=preset, model=str(tiny_reranker()), threads=1)
    data = run_rerank_bench(opts, res)
    assert data["order"] == [SIDECAR, CE]
    for name in (SIDECAR, CE):
        s = data["servers"][name]
        assert (s["requests"], s["ok"], s["errors"]) == (6, 6, 0), s
        assert 6 * 20 <= s["items"] <= 6 * 100 and s["pairs_per_s"] > 0
        assert 0 < s["p50_ms"] <= s["p99_ms"]
    assert data["servers"][SIDECAR]["items"] == data["servers"][CE]["items"]  # same requests
    expect = data["servers"][SIDECAR]["pairs_per_s"] / data["servers"][CE]["pairs_per_s"]
    assert abs(data["ratio"] - expect) < 1e-9
    assert data["target"]["met"] is (data["ratio"] >= 2.0)
    md = res.markdown_path.read_text()
    assert "## Rerank: sidecar against CrossEncoder.predict" in md and "| sidecar |" in md
    saved = json.loads(res.json_path.read_text())["rerank"]
    assert saved["servers"][SIDECAR]["settings"]["SIDECAR_ADMIN_TOKEN"] == "***"
    assert saved["server_env"]["OMP_WAIT_POLICY"] == "PASSIVE"


def test_deberta_reranker_is_built_once_and_scores_as_cross_encoder(tmp_path: Path) -> None:
    """The DeBERTa-shaped benchmark model: the sidecar's loader reads it as a DeBERTa-v3
    reranker whose scores are CrossEncoder.predict's; a second call reuses the directory."""
    import torch
    from model_builders import ce_predict

    from bench.rerank_model import build_deberta_reranker
    from models import load_sentence_encoder

    folder = build_deberta_reranker(tmp_path)
    assert build_deberta_reranker(tmp_path) == folder
    encoder = load_sentence_encoder(folder)
    assert (encoder.family, encoder.task, encoder.model.config.num_hidden_layers) == (
        "deberta-v2",
        "rerank",
        12,
    )
    pairs = [("what is a cuda graph", "a graph replays kernels"), ("hello", "world " * 200)]
    scores = torch.sigmoid(encoder.score(pairs)[:, 0])
    torch.testing.assert_close(scores, ce_predict(folder, pairs), atol=1e-5, rtol=0)
