"""The wrapper-overhead benchmark runs on the current wrapper (its CPU part: mock graphs)."""

from __future__ import annotations

from bench.wrapper_overhead import measure_cpu_overhead


def test_cpu_overhead_measures_real_hits() -> None:
    result = measure_cpu_overhead(calls=10_000, warmup=100)
    assert result["hits"] >= 10_000 + 100  # every timed wrapper call was a replay
    assert result["wrapper_hit_median_us"] > 0 and result["direct_median_us"] > 0
    assert result["graph"] == "mock"
