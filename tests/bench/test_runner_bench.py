"""The engine benchmark's structure (toy model, tiny preset): rows a plot can use."""

from __future__ import annotations

import pytest

from bench.engine import EnginePreset, bench_engine, format_table, percentile, synthetic_batch
from models import make_toy_encoder


def test_percentile():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    assert percentile([5.0], 90) == 5.0


def test_bench_rows_cover_every_bucket_and_mode():
    toy = make_toy_encoder()
    preset = EnginePreset((1, 4), (16, 32, 128), max_repeats=2, min_repeats=2, budget_s=0.0)
    rows = bench_engine(preset=preset, encoder=toy)
    # seq 128 is above the toy's 64-token limit: dropped, not run truncated.
    assert [(r["batch"], r["seq_len"]) for r in rows] == [(1, 16), (1, 32), (4, 16), (4, 32)]
    for r in rows:
        assert r["tokens"] == r["batch"] * r["seq_len"]
        for mode in ("NONE", "FULL", "PIECEWISE"):
            assert 0 < r[f"{mode}_ms"] <= r[f"{mode}_p90_ms"]
        assert "RAW_REPLAY_ms" not in r  # CPU: no raw CUDA replay
    table = format_table(rows)
    assert table.count("\n") == 1 + len(rows) and "PIECEWISE ms p50 (p90)" in table


def test_synthetic_batch_has_exact_lengths():
    toy = make_toy_encoder()
    ids = synthetic_batch(toy, 3, 20, seed=1)
    assert len(ids) == 3 and all(len(x) == 20 for x in ids)
    assert all(x[0] == 2 and x[-1] == 3 for x in ids)  # [CLS] ... [SEP]
    assert synthetic_batch(toy, 3, 20, seed=1) == ids
