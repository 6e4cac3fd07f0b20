"""AdaptiveCUDAGraphWrapper and CUDAGraphGroup on the CPU (mock graphs), real small module.

Mock graph memory = bytes of the output storage: a (B, 16) float32 output is B * 64 bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cudagraph import (
    AdaptiveCUDAGraphWrapper,
    BatchDescriptor,
    CUDAGraphGroup,
    CUDAGraphMode,
    GraphCacheView,
    ProfileError,
    cudagraph_context,
)

H = 16
FULL = CUDAGraphMode.FULL
PIECEWISE = CUDAGraphMode.PIECEWISE
BYTES_PER_ROW = H * 4


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(H, 32), nn.GELU(), nn.Linear(32, H), nn.LayerNorm(H)).eval()


def desc(batch: int) -> BatchDescriptor:
    return BatchDescriptor(num_tokens=batch, num_reqs=batch)


class Harness:
    """One static input buffer per shape, as a runner keeps them."""

    def __init__(self, wrapper: AdaptiveCUDAGraphWrapper, model: nn.Module) -> None:
        self.wrapper = wrapper
        self.model = model
        self.static: dict[int, torch.Tensor] = {}

    def buffer(self, batch: int) -> torch.Tensor:
        return self.static.setdefault(batch, torch.zeros(batch, H))

    def run(self, batch: int, times: int = 1) -> None:
        for _ in range(times):
            fresh = torch.randn(batch, H)
            self.buffer(batch).copy_(fresh)
            with torch.inference_mode(), cudagraph_context(FULL, desc(batch)):
                out = self.wrapper(self.buffer(batch))
                torch.testing.assert_close(out, self.model(fresh))

    def dummy(self, descriptor: BatchDescriptor) -> tuple[tuple, dict]:
        return (self.buffer(descriptor.num_tokens),), {}


def make(**kwargs) -> Harness:
    model = make_model()
    return Harness(AdaptiveCUDAGraphWrapper(model, FULL, **kwargs), model)


# ---------------------------------------------------------------- counting and capture


def test_hit_rate() -> None:
    h = make()
    assert h.wrapper.stats_snapshot()["hit_rate"] == 0.0
    h.run(2, times=4)
    snap = h.wrapper.stats_snapshot()
    assert (snap["hits"], snap["misses"], snap["hit_rate"]) == (3, 1, 0.75)


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_capture_threshold(threshold: int) -> None:
    h = make(capture_threshold=threshold)
    assert h.wrapper.capture_threshold == threshold
    h.run(4, times=threshold - 1)
    snap = h.wrapper.stats_snapshot()
    assert snap["captures"] == 0 and snap["eager_runs"] == threshold - 1
    assert snap["misses"] == threshold - 1
    h.run(4)  # the threshold-th sighting captures
    assert h.wrapper.get_cached_descriptors() == [desc(4)]
    h.run(4)
    snap = h.wrapper.stats_snapshot()
    assert (snap["captures"], snap["hits"], snap["misses"]) == (1, 1, threshold)


def test_hot_shapes_most_requested_first() -> None:
    h = make(capture_threshold=3)
    h.run(2, times=3)
    h.run(8, times=5)
    h.run(1, times=1)
    h.run(4, times=1)  # same count as 1 but more recent: ranks first among the ties
    hot = h.wrapper.get_hot_shapes(10)
    assert [(s.descriptor, s.count, s.captured) for s in hot] == [
        (desc(8), 5, True),
        (desc(2), 3, True),
        (desc(4), 1, False),
        (desc(1), 1, False),
    ]
    assert h.wrapper.get_hot_shapes(2) == hot[:2]


# ---------------------------------------------------------------- eviction


def test_count_eviction_takes_the_least_valuable_graph() -> None:
    h = make(max_cached_graphs=2, young_lookups=0)
    h.run(1, times=5)  # hot
    h.run(2, times=1)  # cold
    h.run(3, times=1)  # needs room: the cold one goes even though 1 is less recent
    assert set(h.wrapper.get_cached_descriptors()) == {desc(1), desc(3)}
    assert h.wrapper.stats_snapshot()["evictions"] == 1


def test_recency_decay_lets_old_traffic_go_cold() -> None:
    h = make(max_cached_graphs=2, young_lookups=0, half_life_lookups=4)
    h.run(1, times=10)  # hot long ago
    h.run(2, times=6)  # moderately hot, recent: 10 * 0.5**(6/4) + ... < 6-ish
    h.run(3)
    assert set(h.wrapper.get_cached_descriptors()) == {desc(2), desc(3)}
    # without decay (huge half-life) the 10-count shape would have stayed
    h2 = make(max_cached_graphs=2, young_lookups=0, half_life_lookups=10**9)
    h2.run(1, times=10)
    h2.run(2, times=6)
    h2.run(3)
    assert set(h2.wrapper.get_cached_descriptors()) == {desc(1), desc(3)}


def test_min_replays_to_keep_spares_young_graphs() -> None:
    h = make(max_cached_graphs=2, min_replays_to_keep=2, young_lookups=100)
    h.run(1, times=6)  # seasoned: 5 replays
    h.run(2)  # young, 0 replays: spared although its score is lower
    h.run(3)
    assert set(h.wrapper.get_cached_descriptors()) == {desc(2), desc(3)}


def test_young_means_captured_fewer_than_young_lookups_ago() -> None:
    h = make(max_cached_graphs=2, min_replays_to_keep=2, young_lookups=3)
    h.run(1, times=6)
    h.run(2)  # captured at lookup 7
    h.run(1, times=3)  # lookups 8..10: graph 2 is no longer young (10 - 7 >= 3)
    h.run(3)
    assert set(h.wrapper.get_cached_descriptors()) == {desc(1), desc(3)}


def test_a_cache_full_of_young_graphs_still_evicts() -> None:
    h = make(max_cached_graphs=2, min_replays_to_keep=5, young_lookups=1000)
    h.run(1, times=2)
    h.run(2, times=3)
    h.run(3)  # everything is young and under-replayed: the least valuable (1) goes
    assert set(h.wrapper.get_cached_descriptors()) == {desc(2), desc(3)}
    assert h.wrapper.stats_snapshot()["evictions"] == 1


def test_memory_budget_evicts_until_under() -> None:
    budget = 10 * BYTES_PER_ROW
    h = make(memory_budget_bytes=budget, young_lookups=0)
    h.run(4, times=3)  # 4 rows
    h.run(2, times=2)  # 2 rows  -> 6
    h.run(3)  # 3 rows -> 9
    assert h.wrapper.memory_bytes() == 9 * BYTES_PER_ROW
    h.run(5)  # 5 rows -> 14 > 10: evict the least valuable until <= 10
    assert h.wrapper.memory_bytes() <= budget
    cached = set(h.wrapper.get_cached_descriptors())
    assert desc(5) in cached and desc(4) in cached  # the new one and the hottest stay
    assert h.wrapper.stats_snapshot()["evictions"] == 2
    assert h.wrapper.stats_snapshot()["memory_bytes"] == h.wrapper.memory_bytes()
    assert sum(e.memory_bytes for e in h.wrapper.cached_entries()) == h.wrapper.memory_bytes()


def test_graph_larger_than_the_budget_runs_eager() -> None:
    h = make(memory_budget_bytes=4 * BYTES_PER_ROW)
    h.run(2)
    h.run(8, times=3)  # 8 rows > budget: dropped, answered eagerly (values checked in run)
    assert h.wrapper.get_cached_descriptors() == [desc(2)]
    snap = h.wrapper.stats_snapshot()
    assert snap["capture_failures"] == 1 and snap["eager_runs"] == 3
    reason = h.wrapper.capture_failure_reason(desc(8))
    assert reason is not None and "more than the whole memory budget" in reason


# ---------------------------------------------------------------- prewarm


def test_prewarm_largest_first_skips_cached_and_fails_over_budget() -> None:
    h = make(memory_budget_bytes=12 * BYTES_PER_ROW, capture_threshold=5)
    h.run(2, times=5)  # captured by traffic
    seen: list[BatchDescriptor] = []

    def dummy(d: BatchDescriptor) -> tuple[tuple, dict]:
        seen.append(d)
        return h.dummy(d)

    report = h.wrapper.prewarm([desc(1), desc(4), desc(2), desc(16), desc(8), desc(4)], dummy)
    # largest first: 16 alone is over the budget; 8 fits (2 + 8 rows); 4 would need 14 rows and
    # every cached graph is requested by this prewarm (so protected); 1 fits (11 rows).
    assert report.captured == [desc(8), desc(1)]
    assert report.skipped == [desc(2)]
    assert [d for d, _ in report.failed] == [desc(16), desc(4)]
    assert "more than the whole memory budget" in report.failed[0][1]
    assert "memory budget full" in report.failed[1][1]
    assert seen == [desc(16), desc(8), desc(4), desc(1)]
    assert report.seconds > 0
    assert set(h.wrapper.get_cached_descriptors()) == {desc(8), desc(2), desc(1)}
    assert h.wrapper.memory_bytes() == 11 * BYTES_PER_ROW
    snap = h.wrapper.stats_snapshot()
    assert (snap["hits"], snap["misses"]) == (0, 5)  # prewarm does not count lookups
    assert [s.descriptor for s in h.wrapper.get_hot_shapes(10)] == [desc(2)]
    # prewarmed graphs serve traffic right away, with correct values
    h.run(8)
    assert h.wrapper.stats_snapshot()["hits"] == 1
    json.dumps(report.to_dict())


def test_prewarm_respects_the_count_limit_and_bad_dummy_fn() -> None:
    h = make(max_cached_graphs=2)
    report = h.wrapper.prewarm([desc(1), desc(2), desc(3)], h.dummy)
    assert report.captured == [desc(3), desc(2)]
    assert report.skipped == [desc(1)]
    report = h.wrapper.prewarm([desc(5)], lambda d: h.buffer(5))  # type: ignore[arg-type, return-value]
    assert report.failed and "dummy_fn failed" in report.failed[0][1]
    with pytest.raises(TypeError, match="BatchDescriptor"):
        h.wrapper.prewarm([(5, 5)], h.dummy)  # type: ignore[list-item]


def test_prewarm_context_captures_without_counting() -> None:
    h = make(capture_threshold=10)
    buf = h.buffer(4)
    with torch.inference_mode(), cudagraph_context(FULL, desc(4), prewarm=True):
        h.wrapper(buf)
    assert h.wrapper.get_cached_descriptors() == [desc(4)]
    snap = h.wrapper.stats_snapshot()
    assert (snap["hits"], snap["misses"], snap["captures"]) == (0, 0, 1)
    assert h.wrapper.get_hot_shapes(5) == []
    h.run(4)
    assert h.wrapper.stats_snapshot()["hits"] == 1


# ---------------------------------------------------------------- prediction


def test_prediction_without_a_ladder_doubles_and_halves() -> None:
    h = make(capture_threshold=3)
    h.run(8, times=4)  # hot and captured
    h.run(2, times=2)  # hot, not captured (below threshold)
    assert h.wrapper.predict_shapes(10) == [
        desc(2),  # hot but not captured comes first
        BatchDescriptor(16, 8),  # neighbours of 8 (double tokens, same requests)
        BatchDescriptor(4, 2),  # neighbours of 2
    ]
    assert h.wrapper.predict_shapes(1) == [desc(2)]
    assert h.wrapper.predict_shapes(0) == []


def test_prediction_with_a_ladder_uses_its_neighbours() -> None:
    ladder = [BatchDescriptor(b * s, b) for b in (1, 2, 4) for s in (8, 16, 32)]
    h = make(ladder=ladder)
    h.run(2)  # not on the ladder rows; only FULL descriptors of the ladder are predicted
    wrapper = h.wrapper
    hot = BatchDescriptor(32, 2)  # batch 2, seq 16
    buf = torch.zeros(2, H)
    with torch.inference_mode():
        for _ in range(3):
            with cudagraph_context(FULL, hot):
                wrapper(buf)
    predicted = wrapper.predict_shapes(10)
    # hot-but-captured shapes are not predicted; neighbours are on the ladder, nearest first:
    # same batch, next seq bucket up and down.
    assert predicted[:2] == [BatchDescriptor(64, 2), BatchDescriptor(16, 2)]
    assert all(p in ladder for p in predicted)
    assert hot not in predicted


# ---------------------------------------------------------------- profile


def test_profile_export_import_round_trip() -> None:
    h = make(capture_threshold=3)
    h.run(4, times=5)
    h.run(2, times=2)
    profile = h.wrapper.export_profile()
    assert profile["version"] == 1 and profile["mode"] == "FULL"
    assert [(s["num_tokens"], s["count"], s["captured"]) for s in profile["shapes"]] == [
        (4, 5, True),
        (2, 2, False),
    ]
    json.dumps(profile)  # JSON-serialisable

    fresh = make(capture_threshold=3)
    assert fresh.wrapper.import_profile(profile) == 2
    assert [(s.descriptor, s.count) for s in fresh.wrapper.get_hot_shapes(5)] == [
        (desc(4), 5),
        (desc(2), 2),
    ]
    # the restored hot shape is past the threshold: captured on first sight after restart
    fresh.run(4)
    assert fresh.wrapper.get_cached_descriptors() == [desc(4)]
    assert fresh.wrapper.predict_shapes(1) == [desc(2)]


def test_profile_save_load_and_corrupt_files(tmp_path: Path) -> None:
    h = make()
    h.run(4, times=2)
    path = tmp_path / "sub" / "profile.json"
    h.wrapper.save_profile(path)
    assert json.loads(path.read_text())["shapes"][0]["count"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temp files left
    other = make()
    assert other.wrapper.load_profile(path) == 1

    path.write_text('{"format": "cudagraph-hot-shapes", "version": 1, "mode": "FULL", "shap')
    with pytest.raises(ProfileError, match=r"profile\.json is not valid JSON \(line 1"):
        other.wrapper.load_profile(path)
    with pytest.raises(FileNotFoundError):
        other.wrapper.load_profile(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.update(version=2), "unsupported profile version 2"),
        (lambda p: p.update(format="other"), "not a hot-shape profile"),
        (lambda p: p.update(mode="PIECEWISE"), "recorded in mode PIECEWISE"),
        (lambda p: p.update(mode="TURBO"), "profile mode 'TURBO' is not one of"),
        (lambda p: p.update(shapes={}), "'shapes' must be a list"),
        (lambda p: p["shapes"][0].update(count=-1), r"shapes\[0\]\.count must be an int >= 0"),
        (lambda p: p["shapes"][0].update(num_reqs=99), r"shapes\[0\]: num_reqs \(99\) cannot"),
        (lambda p: p["shapes"].append("x"), r"shapes\[1\] must be an object"),
    ],
)
def test_invalid_profiles_are_refused_clearly(mutate, message: str, tmp_path: Path) -> None:
    h = make()
    h.run(4)
    profile = h.wrapper.export_profile()
    mutate(profile)
    with pytest.raises(ProfileError, match=message):
        h.wrapper.import_profile(profile)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(ProfileError, match="p.json"):
        h.wrapper.load_profile(path)


# ---------------------------------------------------------------- group (PIECEWISE pieces)


class TwoPieces(nn.Module):
    def __init__(self, budget: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.piece1 = nn.Sequential(nn.Linear(H, 2 * H), nn.GELU())  # (T, 2H) output
        self.piece2 = nn.Sequential(nn.Linear(2 * H, H), nn.LayerNorm(H))  # (T, H) output
        self.w1 = AdaptiveCUDAGraphWrapper(
            self.piece1, PIECEWISE, name="p1", memory_budget_bytes=budget
        )
        self.w2 = AdaptiveCUDAGraphWrapper(
            self.piece2, PIECEWISE, name="p2", memory_budget_bytes=budget
        )
        self.buf = torch.zeros(64, 2 * H)  # static buffer of the eager middle op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.buf[: x.shape[0]]
        torch.mul(self.w1(x), 0.5, out=mid)  # eager between the pieces
        return self.w2(mid)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.piece2(self.piece1(x) * 0.5)


def test_group_aggregates_its_pieces() -> None:
    model = TwoPieces()
    group = CUDAGraphGroup([model.w1, model.w2])
    assert isinstance(group, GraphCacheView)
    assert isinstance(model.w1, GraphCacheView)
    static = torch.zeros(8, H)
    with torch.inference_mode():
        for num_reqs in (1, 2, 4):  # one relaxed key: 1 miss, 2 hits
            fresh = torch.randn(8, H)
            static.copy_(fresh)
            with cudagraph_context(PIECEWISE, BatchDescriptor(8, num_reqs)):
                torch.testing.assert_close(model(static), model.reference(fresh))
    snap = group.stats_snapshot()
    assert (snap["hits"], snap["misses"], snap["captures"], snap["cached_graphs"]) == (2, 1, 1, 1)
    assert snap["memory_bytes"] == 8 * 2 * H * 4 + 8 * H * 4  # both pieces' outputs
    assert snap["memory_bytes"] == group.memory_bytes()
    assert snap["capture_seconds_total"] == pytest.approx(
        model.w1.stats_snapshot()["capture_seconds_total"]
        + model.w2.stats_snapshot()["capture_seconds_total"]
    )
    assert snap["capture_seconds_buckets"][-1] == [float("inf"), 2]  # one per piece capture
    [entry] = group.cached_entries()
    assert entry.descriptor == BatchDescriptor(8) and entry.replay_count == 2
    assert entry.memory_bytes == snap["memory_bytes"]
    assert group.get_hot_shapes(3)[0].count == 3
    assert group.get_cached_descriptors() == [BatchDescriptor(8)]
    assert group.mode is PIECEWISE and group.capture_threshold == 1
    assert group.memory_budget_bytes is None

    profile = group.export_profile()
    assert group.clear() == 1
    assert model.w1.get_cached_descriptors() == model.w2.get_cached_descriptors() == []
    other = TwoPieces()
    other_group = CUDAGraphGroup([other.w1, other.w2])
    assert other_group.import_profile(profile) == 1
    assert other.w2.get_hot_shapes(1)[0].count == 3


def test_group_prewarm_and_failures_per_piece() -> None:
    # Budget per piece 1600 bytes; piece 1 outputs T * 128 bytes, piece 2 T * 64 bytes.
    model = TwoPieces(budget=1600)
    group = CUDAGraphGroup([model.w1, model.w2])
    statics = {t: torch.zeros(t, H) for t in (4, 8, 16)}

    def run_fn(d: BatchDescriptor) -> None:
        with torch.inference_mode():
            model(statics[d.num_tokens])

    report = group.prewarm(
        [BatchDescriptor(4, 2), BatchDescriptor(16, 4), BatchDescriptor(8)], run_fn
    )
    # 16: piece 1 needs 2048 bytes > budget -> failed (piece 2 captured it, unprotected);
    # 8: fits both; 4: piece 2 needs room (1024 + 512 + 256 > 1600) and evicts its 16 graph.
    assert report.captured == [BatchDescriptor(8), BatchDescriptor(4)]
    [(failed, reason)] = report.failed
    assert failed == BatchDescriptor(16)
    assert "piece 0 (p1)" in reason and "more than the whole memory budget" in reason
    assert set(model.w2.get_cached_descriptors()) == {BatchDescriptor(8), BatchDescriptor(4)}
    assert model.w2.stats_snapshot()["evictions"] == 1
    assert group.stats_snapshot()["misses"] == 0
    assert group.prewarm([BatchDescriptor(8, 8)], run_fn).skipped == [BatchDescriptor(8)]
    assert group.memory_budget_bytes == 2 * 1600
    # the prewarmed pieces serve traffic correctly
    fresh = torch.randn(8, H)
    statics[8].copy_(fresh)
    with torch.inference_mode(), cudagraph_context(PIECEWISE, BatchDescriptor(8, 2)):
        torch.testing.assert_close(model(statics[8]), model.reference(fresh))
    assert group.stats_snapshot()["hits"] == 1


def test_group_validates_members() -> None:
    with pytest.raises(ValueError, match="at least one wrapper"):
        CUDAGraphGroup([])
    a = AdaptiveCUDAGraphWrapper(make_model(), PIECEWISE)
    b = AdaptiveCUDAGraphWrapper(make_model(), FULL)
    with pytest.raises(ValueError, match="different modes"):
        CUDAGraphGroup([a, b])


def test_bad_adaptive_arguments() -> None:
    with pytest.raises(ValueError, match="capture_threshold must be an int >= 1"):
        AdaptiveCUDAGraphWrapper(make_model(), FULL, capture_threshold=0)
    with pytest.raises(ValueError, match="min_replays_to_keep must be an int >= 0"):
        AdaptiveCUDAGraphWrapper(make_model(), FULL, min_replays_to_keep=-1)
    with pytest.raises(TypeError, match="ladder items must be BatchDescriptor"):
        AdaptiveCUDAGraphWrapper(make_model(), FULL, ladder=[4, 8])  # type: ignore[list-item]
