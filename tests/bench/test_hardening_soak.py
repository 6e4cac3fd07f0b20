"""The soak in its CI form: ~35 s of mixed-shape load against a real server process.

`python -m bench.soak --seconds 300` is the long form (MiniLM); this runs the same code with
the toy model and a 4-graph cache so that, in half a minute, every sequence bucket and many
batch sizes are hit and the cache captures and evicts continuously. Asserted: zero errors (each
answer checked for count, dimensions, norm and consistency with earlier answers for the same
text), the cache never above its maximum in any /admin/stats sample, the cache actually churned,
resident memory after warm-up grew < 10%, the queue empty at the end and a clean SIGTERM exit.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakConfig, describe, run_soak

pytestmark = pytest.mark.slow

SECONDS = 35.0
MAX_GRAPHS = 4


def test_soak_short(tmp_path: Path) -> None:
    cfg = SoakConfig(
        seconds=SECONDS,
        warmup_s=8.0,
        concurrency=6,
        model="toy",
        max_cached_graphs=MAX_GRAPHS,
        max_inputs=16,
        sample_s=0.5,
    )
    result = run_soak(cfg, tmp_path / "server.log")
    print("\n" + describe(result))
    assert result.passed, result.failures
    assert result.errors == 0 and result.requests >= 300, result.to_dict()
    assert result.samples >= SECONDS / cfg.sample_s * 0.6
    assert 1 <= result.max_cached_graphs_seen <= MAX_GRAPHS
    stats = result.final_stats
    assert stats["evictions"] >= 5 and stats["captures"] > MAX_GRAPHS, stats  # it churned
    assert stats["hits"] > 0 and stats["capture_failures"] == 0, stats
    assert result.rss_growth < 0.10
    assert result.queue_depth_after == 0 and result.exit_code == 0
    assert set(result.routes) == {"/infer", "/v1/embeddings"}
