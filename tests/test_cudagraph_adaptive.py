"""AdaptiveCUDAGraphWrapper and the GraphCache behind it on the CPU (mock graphs), real small
modules: the policy (threshold, hotness, eviction, budgets, prewarm, prediction, profile), a
PIECEWISE cache of two pieces, and deferred (idle-gap) captures.

Mock graph memory = bytes of the output storage: a (B, 16) float32 output is B * 64 bytes.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cudagraph import (
    CAPTURE_SECONDS_BUCKETS,
    Action,
    AdaptiveCUDAGraphWrapper,
    BatchDescriptor,
    CacheConfig,
    CacheEntry,
    CacheSnapshot,
    CUDAGraphMode,
    CUDAGraphOptions,
    GraphCache,
    GraphForward,
    MockCUDAGraph,
    PrewarmProgress,
    ProfileError,
    cudagraph_context,
    is_capturing,
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
    h = make(capture_threshold=1)
    assert h.wrapper.cache.snapshot().hit_rate == 0.0
    h.run(2, times=4)
    snap = h.wrapper.cache.snapshot()
    assert (snap.hits, snap.misses, snap.hit_rate) == (3, 1, 0.75)


def test_snapshot_is_a_frozen_typed_copy() -> None:
    h = make(capture_threshold=1, max_cached_graphs=5, memory_budget_bytes=10**6)
    h.run(2, times=2)
    snap = h.wrapper.cache.snapshot()
    assert isinstance(snap, CacheSnapshot)
    assert snap == h.wrapper.cache.snapshot()
    assert (snap.mode, snap.captures, snap.replays, snap.cached_graphs) == ("FULL", 1, 1, 1)
    assert (snap.eager_runs, snap.evictions, snap.capture_failures) == (0, 0, 0)
    assert (snap.max_cached_graphs, snap.memory_budget_bytes, snap.capture_threshold) == (
        5,
        10**6,
        1,
    )
    assert snap.pending_captures == 0 and snap.memory_bytes == 2 * BYTES_PER_ROW
    assert [b for b, _ in snap.capture_seconds_buckets] == list(CAPTURE_SECONDS_BUCKETS)
    assert snap.capture_seconds_buckets[-1] == (float("inf"), 1)
    assert snap.capture_seconds_total > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.hits = 0  # type: ignore[misc]
    h.run(2)
    assert snap.hits == 1 and h.wrapper.cache.snapshot().hits == 2  # a copy, not a live view


def test_default_threshold_is_the_cache_config_default() -> None:
    # One default for the library and the service: CacheConfig's (2), not first sight.
    h = make()
    assert h.wrapper.cache.config.capture_threshold == CacheConfig().capture_threshold == 2
    assert h.wrapper.cache.config.max_cached_graphs == CacheConfig().max_cached_graphs
    h.run(4)
    assert h.wrapper.get_cached_descriptors() == []
    h.run(4)
    assert h.wrapper.get_cached_descriptors() == [desc(4)]


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_capture_threshold(threshold: int) -> None:
    h = make(capture_threshold=threshold)
    assert h.wrapper.cache.config.capture_threshold == threshold
    h.run(4, times=threshold - 1)
    snap = h.wrapper.cache.snapshot()
    assert snap.captures == 0 and snap.eager_runs == threshold - 1
    assert snap.misses == threshold - 1
    h.run(4)  # the threshold-th sighting captures
    assert h.wrapper.get_cached_descriptors() == [desc(4)]
    h.run(4)
    snap = h.wrapper.cache.snapshot()
    assert (snap.captures, snap.hits, snap.misses) == (1, 1, threshold)


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
    h = make(capture_threshold=1, max_cached_graphs=2, young_lookups=0)
    h.run(1, times=5)  # hot
    h.run(2, times=1)  # cold
    h.run(3, times=1)  # needs room: the cold one goes even though 1 is less recent
    assert set(h.wrapper.get_cached_descriptors()) == {desc(1), desc(3)}
    assert h.wrapper.cache.snapshot().evictions == 1


def test_recency_decay_lets_old_traffic_go_cold() -> None:
    h = make(capture_threshold=1, max_cached_graphs=2, young_lookups=0, half_life_lookups=4)
    h.run(1, times=10)  # hot long ago
    h.run(2, times=6)  # moderately hot, recent: 10 * 0.5**(6/4) + ... < 6-ish
    h.run(3)
    assert set(h.wrapper.get_cached_descriptors()) == {desc(2), desc(3)}
    # without decay (huge half-life) the 10-count shape would have stayed
    h2 = make(capture_threshold=1, max_cached_graphs=2, young_lookups=0, half_life_lookups=10**9)
    h2.run(1, times=10)
    h2.run(2, times=6)
    h2.run(3)
    assert set(h2.wrapper.get_cached_descriptors()) == {desc(1), desc(3)}


def test_min_replays_to_keep_spares_young_graphs() -> None:
    h = make(capture_threshold=1, max_cached_graphs=2, min_replays_to_keep=2, young_lookups=100)
    h.run(1, times=6)  # seasoned: 5 replays
    h.run(2)  # young, 0 replays: spared although its score is lower
    h.run(3)
    assert set(h.wrapper.get_cached_descriptors()) == {desc(2), desc(3)}


def test_young_means_captured_fewer_than_young_lookups_ago() -> None:
    h = make(capture_threshold=1, max_cached_graphs=2, min_replays_to_keep=2, young_lookups=3)
    h.run(1, times=6)
    h.run(2)  # captured at lookup 7
    h.run(1, times=3)  # lookups 8..10: graph 2 is no longer young (10 - 7 >= 3)
    h.run(3)
    assert set(h.wrapper.get_cached_descriptors()) == {desc(1), desc(3)}


def test_a_cache_full_of_young_graphs_still_evicts() -> None:
    h = make(capture_threshold=1, max_cached_graphs=2, min_replays_to_keep=5, young_lookups=1000)
    h.run(1, times=2)
    h.run(2, times=3)
    h.run(3)  # everything is young and under-replayed: the least valuable (1) goes
    assert set(h.wrapper.get_cached_descriptors()) == {desc(2), desc(3)}
    assert h.wrapper.cache.snapshot().evictions == 1


def test_memory_budget_evicts_until_under() -> None:
    budget = 10 * BYTES_PER_ROW
    h = make(capture_threshold=1, memory_budget_bytes=budget, young_lookups=0)
    h.run(4, times=3)  # 4 rows
    h.run(2, times=2)  # 2 rows  -> 6
    h.run(3)  # 3 rows -> 9
    assert h.wrapper.cache.memory_bytes() == 9 * BYTES_PER_ROW
    h.run(5)  # 5 rows -> 14 > 10: evict the least valuable until <= 10
    assert h.wrapper.cache.memory_bytes() <= budget
    cached = set(h.wrapper.get_cached_descriptors())
    assert desc(5) in cached and desc(4) in cached  # the new one and the hottest stay
    assert h.wrapper.cache.snapshot().evictions == 2
    assert h.wrapper.cache.snapshot().memory_bytes == h.wrapper.cache.memory_bytes()
    assert (
        sum(e.memory_bytes for e in h.wrapper.cache.cached_entries())
        == h.wrapper.cache.memory_bytes()
    )


def test_graph_larger_than_the_budget_runs_eager() -> None:
    h = make(capture_threshold=1, memory_budget_bytes=4 * BYTES_PER_ROW)
    h.run(2)
    h.run(8, times=3)  # 8 rows > budget: dropped, answered eagerly (values checked in run)
    assert h.wrapper.get_cached_descriptors() == [desc(2)]
    snap = h.wrapper.cache.snapshot()
    assert snap.capture_failures == 1 and snap.eager_runs == 3
    reason = h.wrapper.cache.capture_failure_reason(desc(8))
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
    assert h.wrapper.cache.memory_bytes() == 11 * BYTES_PER_ROW
    snap = h.wrapper.cache.snapshot()
    assert (snap.hits, snap.misses) == (0, 5)  # prewarm does not count lookups
    assert [s.descriptor for s in h.wrapper.get_hot_shapes(10)] == [desc(2)]
    # prewarmed graphs serve traffic right away, with correct values
    h.run(8)
    assert h.wrapper.cache.snapshot().hits == 1
    json.dumps(report.to_dict())


def test_prewarm_respects_the_count_limit_and_bad_dummy_fn() -> None:
    h = make(capture_threshold=1, max_cached_graphs=2)
    report = h.wrapper.prewarm([desc(1), desc(2), desc(3)], h.dummy)
    assert report.captured == [desc(3), desc(2)]
    assert report.skipped == [desc(1)]
    report = h.wrapper.prewarm([desc(5)], lambda d: h.buffer(5))  # type: ignore[arg-type, return-value]
    assert report.failed and "dummy_fn failed" in report.failed[0][1]
    with pytest.raises(TypeError, match="BatchDescriptor"):
        h.wrapper.prewarm([(5, 5)], h.dummy)  # type: ignore[list-item]


def test_prewarm_captures_below_the_threshold_without_counting() -> None:
    # Was: a forward under cudagraph_context(..., prewarm=True). Prewarm now only goes through
    # prewarm(), which ignores the threshold and keeps lookups out of the statistics.
    h = make(capture_threshold=10)
    progress: list[PrewarmProgress] = []
    report = h.wrapper.prewarm([desc(4)], h.dummy, on_progress=progress.append)
    assert report.captured == [desc(4)]
    assert h.wrapper.get_cached_descriptors() == [desc(4)]
    snap = h.wrapper.cache.snapshot()
    assert (snap.hits, snap.misses, snap.captures) == (0, 0, 1)
    assert h.wrapper.get_hot_shapes(5) == []
    [step] = progress
    assert (step.index, step.total, step.descriptor, step.outcome) == (1, 1, desc(4), "captured")
    assert step.reason is None and step.seconds > 0
    h.run(4)
    assert h.wrapper.cache.snapshot().hits == 1


# ---------------------------------------------------------------- prediction


def test_prediction_without_a_ladder_doubles_and_halves() -> None:
    h = make(capture_threshold=3)
    h.run(8, times=4)  # hot and captured
    h.run(2, times=2)  # hot, not captured (below threshold)
    assert h.wrapper.cache.predict_shapes(10) == [
        desc(2),  # hot but not captured comes first
        BatchDescriptor(16, 8),  # neighbours of 8 (double tokens, same requests)
        BatchDescriptor(4, 2),  # neighbours of 2
    ]
    assert h.wrapper.cache.predict_shapes(1) == [desc(2)]
    assert h.wrapper.cache.predict_shapes(0) == []


def test_prediction_with_a_ladder_uses_its_neighbours() -> None:
    ladder = [BatchDescriptor(b * s, b) for b in (1, 2, 4) for s in (8, 16, 32)]
    h = make(capture_threshold=1, ladder=ladder)
    h.run(2)  # not on the ladder rows; only FULL descriptors of the ladder are predicted
    wrapper = h.wrapper
    hot = BatchDescriptor(32, 2)  # batch 2, seq 16
    buf = torch.zeros(2, H)
    with torch.inference_mode():
        for _ in range(3):
            with cudagraph_context(FULL, hot):
                wrapper(buf)
    predicted = wrapper.cache.predict_shapes(10)
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
    profile = h.wrapper.cache.export_profile()
    assert profile["version"] == 1 and profile["mode"] == "FULL"
    assert [(s["num_tokens"], s["count"], s["captured"]) for s in profile["shapes"]] == [
        (4, 5, True),
        (2, 2, False),
    ]
    json.dumps(profile)  # JSON-serialisable

    fresh = make(capture_threshold=3)
    assert fresh.wrapper.cache.import_profile(profile) == 2
    assert [(s.descriptor, s.count) for s in fresh.wrapper.get_hot_shapes(5)] == [
        (desc(4), 5),
        (desc(2), 2),
    ]
    # the restored hot shape is past the threshold: captured on first sight after restart
    fresh.run(4)
    assert fresh.wrapper.get_cached_descriptors() == [desc(4)]
    assert fresh.wrapper.cache.predict_shapes(1) == [desc(2)]


def test_profile_save_load_and_corrupt_files(tmp_path: Path) -> None:
    h = make(capture_threshold=1)
    h.run(4, times=2)
    path = tmp_path / "sub" / "profile.json"
    h.wrapper.cache.save_profile(path)
    assert json.loads(path.read_text())["shapes"][0]["count"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["profile.json"]  # no temp files left
    other = make(capture_threshold=1)
    assert other.wrapper.cache.load_profile(path) == 1

    path.write_text('{"format": "cudagraph-hot-shapes", "version": 1, "mode": "FULL", "shap')
    with pytest.raises(ProfileError, match=r"profile\.json is not valid JSON \(line 1"):
        other.wrapper.cache.load_profile(path)
    with pytest.raises(FileNotFoundError):
        other.wrapper.cache.load_profile(tmp_path / "missing.json")


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
    h = make(capture_threshold=1)
    h.run(4)
    profile = h.wrapper.cache.export_profile()
    mutate(profile)
    with pytest.raises(ProfileError, match=message):
        h.wrapper.cache.import_profile(profile)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(profile))
    with pytest.raises(ProfileError, match="p.json"):
        h.wrapper.cache.load_profile(path)


# ---------------------------------------------------------------- PIECEWISE: one cache, two pieces

PIECE1_BYTES_PER_TOKEN = 2 * H * 4  # piece 1 outputs (T, 2H) float32
PIECE2_BYTES_PER_TOKEN = H * 4  # piece 2 outputs (T, H) float32
ENTRY_BYTES_PER_TOKEN = PIECE1_BYTES_PER_TOKEN + PIECE2_BYTES_PER_TOKEN


class TwoPieces(nn.Module):
    """Two graphed pieces around an eager middle op, both called through one forward of one
    ``GraphCache(pieces=2)``; the eager op writes into a static buffer, so piece 2 always reads
    one address."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.piece1 = nn.Sequential(nn.Linear(H, 2 * H), nn.GELU())  # (T, 2H) output
        self.piece2 = nn.Sequential(nn.Linear(2 * H, H), nn.LayerNorm(H))  # (T, H) output
        self.buf = torch.zeros(64, 2 * H)  # static buffer of the eager middle op
        self.statics: dict[int, torch.Tensor] = {}  # static (T, H) inputs per token count
        self.fail_piece: int | None = None  # raise while capturing this piece
        self.dummy_runs = 0

    def forward(self, fwd: GraphForward, x: torch.Tensor) -> torch.Tensor:
        mid = self.buf[: x.shape[0]]
        torch.mul(fwd(0, self._piece, 0, x), 0.5, out=mid)  # eager between the pieces
        return fwd(1, self._piece, 1, mid)

    def _piece(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if index == self.fail_piece and is_capturing():
            raise RuntimeError("operation not permitted when stream is capturing")
        return (self.piece1, self.piece2)[index](x)

    def reference(self, x: torch.Tensor) -> torch.Tensor:
        return self.piece2(self.piece1(x) * 0.5)

    def static(self, tokens: int) -> torch.Tensor:
        return self.statics.setdefault(tokens, torch.zeros(tokens, H))

    def dummy_run(self, descriptor: BatchDescriptor, fwd: GraphForward) -> None:
        """The cache's ``run``: one forward of ``descriptor``'s shape over the static inputs."""
        self.dummy_runs += 1
        static = self.static(descriptor.num_tokens)  # a normal tensor, not an inference one
        with torch.inference_mode():
            self(fwd, static)

    def serve(self, cache: GraphCache, descriptor: BatchDescriptor) -> Action:
        """One traffic forward with fresh data (copied out inside the block, checked against
        eager); returns how the cache ran it."""
        tokens = descriptor.num_tokens
        fresh = torch.randn(tokens, H)
        self.static(tokens).copy_(fresh)
        with torch.inference_mode(), cache.forward(descriptor) as fwd:
            out = self(fwd, self.static(tokens)).clone()
        torch.testing.assert_close(out, self.reference(fresh))
        return fwd.action


def piecewise(**config) -> tuple[TwoPieces, GraphCache]:
    options = config.pop("options", None)
    defer = config.pop("defer_captures", False)
    cache = GraphCache(
        PIECEWISE, CacheConfig(**config), options, pieces=2, defer_captures=defer, name="two"
    )
    return TwoPieces(), cache


def tokens(t: int, reqs: int | None = None) -> BatchDescriptor:
    return BatchDescriptor(t, reqs)


def assert_whole_entries(cache: GraphCache) -> None:
    """Every cached entry holds a live graph for each piece, and the cache is charged exactly
    the sum of its entries' pieces."""
    total = 0
    for key in cache.get_cached_descriptors():
        entry = cache.entry_for(key)
        assert entry is not None and len(entry.pieces) == 2, key
        for piece in entry.pieces:
            assert isinstance(piece.graph, MockCUDAGraph) and piece.graph.captured
            assert piece.output is not None
        assert entry.memory_bytes == sum(p.memory_bytes for p in entry.pieces)
        total += entry.memory_bytes
    assert cache.memory_bytes() == total == cache.snapshot().memory_bytes


def released(entry: CacheEntry) -> bool:
    """Every piece of ``entry`` was reset and dropped its output."""
    graphs = [p.graph for p in entry.pieces]
    assert all(isinstance(g, MockCUDAGraph) for g in graphs)
    return all(not g.captured for g in graphs if isinstance(g, MockCUDAGraph)) and all(
        p.output is None for p in entry.pieces
    )


def test_piecewise_cache_keeps_one_entry_for_both_pieces() -> None:
    # Replaces CUDAGraphGroup, which summed the piece wrappers' views: one cache now owns the
    # logical graph, so its counters are the model's directly.
    model, cache = piecewise(capture_threshold=1)
    assert cache.pieces == 2 and cache.mode is PIECEWISE
    actions = [model.serve(cache, tokens(8, r)) for r in (1, 2, 4)]  # one relaxed key
    assert actions == [Action.CAPTURE, Action.REPLAY, Action.REPLAY]
    snap = cache.snapshot()
    assert (snap.hits, snap.misses, snap.captures, snap.cached_graphs) == (2, 1, 1, 1)
    assert snap.memory_bytes == 8 * ENTRY_BYTES_PER_TOKEN  # both pieces' outputs
    assert snap.memory_bytes == cache.memory_bytes()
    entry = cache.entry_for(tokens(8, 2))
    assert entry is not None and entry.descriptor == tokens(8)
    assert [p.memory_bytes for p in entry.pieces] == [
        8 * PIECE1_BYTES_PER_TOKEN,
        8 * PIECE2_BYTES_PER_TOKEN,
    ]
    assert all(isinstance(p.graph, MockCUDAGraph) for p in entry.pieces)
    assert snap.capture_seconds_total == pytest.approx(entry.capture_seconds)
    assert entry.capture_seconds == pytest.approx(sum(p.capture_seconds for p in entry.pieces))
    # One capture (both pieces) is one observation; the group counted one per piece.
    assert snap.capture_seconds_buckets[-1] == (float("inf"), 1)
    [info] = cache.cached_entries()
    assert info.descriptor == tokens(8) and info.replay_count == 2
    assert info.memory_bytes == snap.memory_bytes
    assert info.capture_seconds == pytest.approx(entry.capture_seconds)
    assert cache.get_hot_shapes(3)[0].count == 3
    assert cache.get_cached_descriptors() == [tokens(8)]
    assert snap.mode == "PIECEWISE" and snap.capture_threshold == 1
    assert snap.memory_budget_bytes is None
    assert_whole_entries(cache)

    profile = cache.export_profile()
    assert cache.clear() == 1
    assert cache.get_cached_descriptors() == [] and cache.memory_bytes() == 0
    assert released(entry)
    assert cache.snapshot().evictions == 0
    _, other = piecewise(capture_threshold=1)
    assert other.import_profile(profile) == 1
    assert other.get_hot_shapes(1)[0].count == 3


def test_one_lookup_and_one_hot_shape_record_per_logical_forward() -> None:
    model, cache = piecewise(capture_threshold=2)
    expected = [
        (Action.EAGER, 0, 1),  # below the threshold
        (Action.CAPTURE, 0, 2),  # the second sighting captures both pieces
        (Action.REPLAY, 1, 2),
        (Action.REPLAY, 2, 2),
    ]
    for n, (action, hits, misses) in enumerate(expected, start=1):
        assert model.serve(cache, tokens(16, 1 + n % 2)) is action
        snap = cache.snapshot()
        assert (snap.hits, snap.misses) == (hits, misses)  # once per forward, not per piece
        assert snap.hits + snap.misses == n
        [hot] = cache.get_hot_shapes(10)
        assert (hot.descriptor, hot.count) == (tokens(16), n)
        assert hot.captured is (n >= 2)
    snap = cache.snapshot()
    assert (snap.captures, snap.replays, snap.eager_runs) == (1, 2, 1)
    [info] = cache.cached_entries()
    assert info.replay_count == 2
    assert cache.export_profile()["shapes"][0]["count"] == 4


def test_piecewise_entry_is_cached_for_all_pieces_or_none_under_a_tight_budget() -> None:
    # 8 tokens: piece 1 needs 1024 bytes, piece 2 512, the entry 1536; 4 tokens: 768.
    budget = 2000  # one 8-token entry fits, two do not; each piece alone would always fit
    model, cache = piecewise(capture_threshold=1, memory_budget_bytes=budget, young_lookups=0)
    model.serve(cache, tokens(8))
    eight = cache.entry_for(tokens(8))
    assert eight is not None and len(eight.pieces) == 2
    assert cache.memory_bytes() == eight.memory_bytes == 8 * ENTRY_BYTES_PER_TOKEN
    assert_whole_entries(cache)

    model.serve(cache, tokens(8))  # a replay, so 8 is not young either
    model.serve(cache, tokens(4))  # 1536 + 768 > 2000: the 8 entry goes, both its pieces
    assert cache.get_cached_descriptors() == [tokens(4)]
    assert cache.entry_for(tokens(8)) is None
    assert released(eight)
    assert cache.memory_bytes() == 4 * ENTRY_BYTES_PER_TOKEN
    assert cache.snapshot().evictions == 1  # one eviction for the logical graph
    assert_whole_entries(cache)

    # 12 tokens: each piece (1536 and 768 bytes) fits the budget, the entry (2304) does not:
    # neither piece is kept, and the forward is still answered (eagerly).
    assert model.serve(cache, tokens(12)) is Action.CAPTURE
    assert cache.entry_for(tokens(12)) is None
    assert cache.get_cached_descriptors() == [tokens(4)]
    reason = cache.capture_failure_reason(tokens(12))
    assert reason is not None and "more than the whole memory budget" in reason
    assert_whole_entries(cache)

    # Many shapes under the budget: at no point does an entry hold only some of its pieces.
    rng = random.Random(0)
    for _ in range(40):
        model.serve(cache, tokens(rng.choice([1, 2, 3, 4, 5, 6, 8, 10])))
        assert cache.memory_bytes() <= budget
        assert_whole_entries(cache)


def test_a_failed_piece_keeps_no_piece_of_the_forward() -> None:
    model, cache = piecewise(
        capture_threshold=1,
        options=CUDAGraphOptions(capture_retry_backoff_s=60.0, capture_retry_backoff_max_s=60.0),
    )
    model.fail_piece = 1  # piece 0 captures, piece 1 cannot
    assert model.serve(cache, tokens(8)) is Action.CAPTURE  # answered eagerly, correctly
    assert cache.get_cached_descriptors() == [] and cache.memory_bytes() == 0
    reason = cache.capture_failure_reason(tokens(8))
    assert reason is not None and reason.startswith("piece 1: capture failed: RuntimeError")
    snap = cache.snapshot()
    assert (snap.capture_failures, snap.captures, snap.eager_runs) == (1, 0, 1)
    model.fail_piece = None
    assert model.serve(cache, tokens(8)) is Action.EAGER  # in back-off
    assert model.serve(cache, tokens(16)) is Action.CAPTURE  # other shapes unaffected
    assert cache.get_cached_descriptors() == [tokens(16)]


def test_a_forward_that_skips_a_piece_is_not_cached() -> None:
    model, cache = piecewise(capture_threshold=1)
    x = model.static(4)
    with torch.inference_mode(), cache.forward(tokens(4)) as fwd:
        out = fwd(0, model.piece1, x).clone()  # piece 1 never called
    torch.testing.assert_close(out, model.piece1(x))
    assert cache.get_cached_descriptors() == []
    reason = cache.capture_failure_reason(tokens(4))
    assert reason is not None and "pieces [1] were not called" in reason

    with torch.inference_mode(), cache.forward(tokens(8)) as fwd:
        fwd(0, model.piece1, model.static(8))
        fwd(0, model.piece1, model.static(8))  # piece 0 twice, piece 1 never
    assert cache.get_cached_descriptors() == []
    assert "piece 0: called twice in one forward" in (cache.capture_failure_reason(tokens(8)) or "")
    assert cache.snapshot().capture_failures == 2


def test_piecewise_prewarm_all_or_none_against_one_budget() -> None:
    # Was the group's per-piece prewarm (each piece with its own budget, a piece captured on its
    # own and evicted on its own). Now one budget for the whole entry: 16 tokens (3072 bytes) is
    # over it and keeps neither piece; 8 (1536) and 4 (768) fit together.
    model, cache = piecewise(capture_threshold=1, memory_budget_bytes=2400)
    report = cache.prewarm([tokens(4, 2), tokens(16, 4), tokens(8)], model.dummy_run)
    assert report.captured == [tokens(8), tokens(4)]
    [(failed, reason)] = report.failed
    assert failed == tokens(16)
    assert "more than the whole memory budget" in reason
    assert cache.entry_for(tokens(16)) is None
    assert set(cache.get_cached_descriptors()) == {tokens(8), tokens(4)}
    assert cache.memory_bytes() == (8 + 4) * ENTRY_BYTES_PER_TOKEN
    assert_whole_entries(cache)
    snap = cache.snapshot()
    assert (snap.misses, snap.evictions, snap.capture_failures) == (0, 0, 1)
    assert cache.get_hot_shapes(5) == []  # prewarm does not count lookups
    assert cache.prewarm([tokens(8, 8)], model.dummy_run).skipped == [tokens(8)]
    assert snap.memory_budget_bytes == 2400
    # the prewarmed pieces serve traffic correctly
    assert model.serve(cache, tokens(8, 2)) is Action.REPLAY
    assert cache.snapshot().hits == 1


def test_bulk_prewarm_keeps_everything_it_captured() -> None:
    for eviction in ("hotness", "lru"):
        n = 3
        model, cache = piecewise(
            capture_threshold=1, max_cached_graphs=n, young_lookups=0, eviction=eviction
        )
        for t in (1, 2, 3):  # the cache is full of hot traffic graphs
            for _ in range(5):
                model.serve(cache, tokens(t))
        assert set(cache.get_cached_descriptors()) == {tokens(1), tokens(2), tokens(3)}
        wanted = [tokens(8), tokens(16), tokens(24)]
        report = cache.prewarm(wanted, model.dummy_run)
        # Each capture evicts a traffic graph, never one this prewarm captured (the new graphs
        # have no demand yet, so hotness or LRU would otherwise pick them first).
        assert report.captured == [tokens(24), tokens(16), tokens(8)], eviction
        assert report.skipped == [] and report.failed == []
        assert set(cache.get_cached_descriptors()) == set(wanted), eviction
        assert cache.snapshot().evictions == n
        assert_whole_entries(cache)
        for d in wanted:
            assert model.serve(cache, d) is Action.REPLAY


def test_prewarm_beyond_the_count_limit_skips_the_rest() -> None:
    model, cache = piecewise(capture_threshold=1, max_cached_graphs=2)
    report = cache.prewarm([tokens(2), tokens(4), tokens(8)], model.dummy_run)
    assert report.captured == [tokens(8), tokens(4)]
    assert report.skipped == [tokens(2)]
    assert set(cache.get_cached_descriptors()) == {tokens(8), tokens(4)}


# ---------------------------------------------------------------- deferred (idle-gap) captures


def test_threshold_crossing_is_answered_eagerly_and_captured_in_the_next_idle_gap() -> None:
    model, cache = piecewise(
        capture_threshold=2, max_capture_delay_s=60.0, idle_prewarm_top_k=0, defer_captures=True
    )
    key = tokens(8)
    assert model.serve(cache, tokens(8, 1)) is Action.EAGER  # below the threshold
    assert cache.pending_captures() == []
    assert not cache.idle_work_due(True)
    assert model.serve(cache, tokens(8, 2)) is Action.EAGER  # crosses it: eager, queued
    assert cache.pending_captures() == [key]
    snap = cache.snapshot()
    assert (snap.pending_captures, snap.captures, snap.eager_runs) == (1, 0, 2)
    assert cache.get_cached_descriptors() == [] and model.dummy_runs == 0
    assert cache.idle_work_due(True)
    assert not cache.idle_work_due(False)  # under load, before max_capture_delay_s
    assert cache.idle_capture(model.dummy_run, idle=False) is None
    assert model.serve(cache, tokens(8, 4)) is Action.EAGER  # still waiting, queued once
    assert cache.pending_captures() == [key]

    step = cache.idle_capture(model.dummy_run)
    assert step is not None
    assert (step.descriptor, step.outcome, step.reason) == (key, "captured", None)
    assert model.dummy_runs == 1
    assert cache.pending_captures() == [] and cache.get_cached_descriptors() == [key]
    assert not cache.idle_work_due(True) and not cache.idle_work_due(False)
    assert cache.idle_capture(model.dummy_run) is None
    assert model.serve(cache, tokens(8, 2)) is Action.REPLAY  # correct values checked in serve
    snap = cache.snapshot()
    assert (snap.hits, snap.misses, snap.captures, snap.pending_captures) == (1, 3, 1, 0)
    assert_whole_entries(cache)


def test_a_deferred_capture_is_due_under_load_after_max_capture_delay() -> None:
    model, cache = piecewise(
        capture_threshold=1, max_capture_delay_s=0.0, idle_prewarm_top_k=0, defer_captures=True
    )
    assert model.serve(cache, tokens(4)) is Action.EAGER
    assert cache.pending_captures() == [tokens(4)]
    assert cache.idle_work_due(False)
    step = cache.idle_capture(model.dummy_run, idle=False)
    assert step is not None and (step.descriptor, step.outcome) == (tokens(4), "captured")
    assert model.serve(cache, tokens(4)) is Action.REPLAY


def test_idle_gaps_capture_predicted_shapes_only_while_there_is_room() -> None:
    model, cache = piecewise(capture_threshold=3, max_cached_graphs=2, idle_prewarm_top_k=4)
    model.serve(cache, tokens(8))  # hot, below the threshold: the first prediction
    assert cache.predict_shapes(1) == [tokens(8)]
    assert cache.idle_work_due(True) and not cache.idle_work_due(False)
    assert cache.idle_capture(model.dummy_run, idle=False) is None  # predictions: idle only
    step = cache.idle_capture(model.dummy_run)
    assert step is not None and (step.descriptor, step.outcome) == (tokens(8), "captured")
    assert model.serve(cache, tokens(8)) is Action.REPLAY
    step = cache.idle_capture(model.dummy_run)  # a neighbour of the hot shape, room for it
    assert step is not None and step.outcome == "captured"
    assert step.descriptor in (tokens(16), tokens(4))
    assert cache.snapshot().cached_graphs == 2
    assert not cache.idle_work_due(True)  # full: nothing more is predicted
    assert cache.idle_capture(model.dummy_run) is None
    assert cache.snapshot().evictions == 0


def test_idle_prediction_never_evicts() -> None:
    # Full by count: nothing predicted is even attempted.
    model, cache = piecewise(capture_threshold=1, max_cached_graphs=2, idle_prewarm_top_k=4)
    model.serve(cache, tokens(2))
    model.serve(cache, tokens(4))
    cached = set(cache.get_cached_descriptors())
    assert cached == {tokens(2), tokens(4)}
    assert cache.predict_shapes(4)  # there are predictions (neighbours of 2 and 4)...
    assert not cache.idle_work_due(True)  # ...but no room for them
    assert cache.idle_capture(model.dummy_run) is None
    assert model.dummy_runs == 0

    # Room by count, but the predicted graph would need an eviction under the memory budget:
    # it is captured, refused without evicting anything, and not counted as a failure.
    budget = 4 * ENTRY_BYTES_PER_TOKEN + 100
    model, cache = piecewise(
        capture_threshold=2, memory_budget_bytes=budget, young_lookups=0, idle_prewarm_top_k=4
    )
    for _ in range(3):
        model.serve(cache, tokens(4))  # cached: 768 of the budget's 868 bytes
    model.serve(cache, tokens(2))  # hot, below the threshold: predicted first
    before = cache.snapshot()
    assert cache.get_cached_descriptors() == [tokens(4)]
    assert cache.predict_shapes(1) == [tokens(2)]
    assert cache.idle_work_due(True)
    step = cache.idle_capture(model.dummy_run)
    assert step is not None and (step.descriptor, step.outcome) == (tokens(2), "skipped")
    assert step.reason is not None and "memory budget full" in step.reason
    after = cache.snapshot()
    assert cache.get_cached_descriptors() == [tokens(4)]
    assert (after.evictions, after.captures) == (0, before.captures)
    assert after.capture_failures == before.capture_failures
    assert cache.capture_failure_reason(tokens(2)) is None  # no back-off either
    assert_whole_entries(cache)
    # traffic that crosses the threshold may still evict (that is not a prediction)
    assert model.serve(cache, tokens(2)) is Action.CAPTURE
    assert cache.get_cached_descriptors() == [tokens(2)]
    assert cache.snapshot().evictions == 1


def test_a_predicted_capture_that_fails_is_reported_failed() -> None:
    model, cache = piecewise(capture_threshold=2, idle_prewarm_top_k=1)
    model.serve(cache, tokens(2))  # hot, below the threshold: predicted

    def broken(descriptor: BatchDescriptor, forward: GraphForward) -> None:
        raise RuntimeError("dummy inputs cannot be made")

    step = cache.idle_capture(broken)
    assert step is not None and (step.descriptor, step.outcome) == (tokens(2), "failed")
    assert step.reason is not None and "dummy inputs cannot be made" in step.reason
    assert cache.snapshot().capture_failures == 1
    assert cache.capture_failure_reason(tokens(2)) is not None  # backed off


# ---------------------------------------------------------------- max_cached_graphs=0


def test_max_cached_graphs_zero_runs_everything_eagerly() -> None:
    for defer in (False, True):
        model, cache = piecewise(max_cached_graphs=0, capture_threshold=1, defer_captures=defer)
        for t in (4, 8, 4, 4):
            assert model.serve(cache, tokens(t)) is Action.EAGER
        snap = cache.snapshot()
        assert (snap.captures, snap.cached_graphs, snap.memory_bytes) == (0, 0, 0)
        assert (snap.misses, snap.eager_runs, snap.hits) == (4, 4, 0)
        assert snap.max_cached_graphs == 0
        assert cache.pending_captures() == []
        report = cache.prewarm([tokens(2), tokens(16), tokens(4)], model.dummy_run)
        assert report.captured == [] and report.failed == []
        assert report.skipped == [tokens(16), tokens(4), tokens(2)]
        assert not cache.idle_work_due(True)
        assert cache.idle_capture(model.dummy_run) is None
        assert model.dummy_runs == 0
        assert cache.get_cached_descriptors() == []


# ---------------------------------------------------------------- arguments


def test_bad_graph_cache_arguments() -> None:
    # (Was the group's member validation: an empty group, members of different modes. One
    # cache has one mode; the piece count is checked instead.)
    for pieces in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="pieces must be an int >= 1"):
            GraphCache(PIECEWISE, pieces=pieces)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="config must be CacheConfig"):
        GraphCache(FULL, {"max_cached_graphs": 1})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be CUDAGraphOptions"):
        GraphCache(FULL, CacheConfig(), CacheConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_cached_graphs must be an int >= 0"):
        CacheConfig(max_cached_graphs=-1)
    with pytest.raises(ValueError, match="eviction must be 'lru' or 'hotness'"):
        CacheConfig(eviction="fifo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_capture_delay_s must be >= 0"):
        CacheConfig(max_capture_delay_s=-1.0)
    with pytest.raises(ValueError, match="idle_prewarm_top_k must be an int >= 0"):
        CacheConfig(idle_prewarm_top_k=-1)


def test_bad_adaptive_arguments() -> None:
    with pytest.raises(ValueError, match="capture_threshold must be an int >= 1"):
        AdaptiveCUDAGraphWrapper(make_model(), FULL, capture_threshold=0)
    with pytest.raises(ValueError, match="min_replays_to_keep must be an int >= 0"):
        AdaptiveCUDAGraphWrapper(make_model(), FULL, min_replays_to_keep=-1)
    with pytest.raises(TypeError, match="ladder items must be BatchDescriptor"):
        AdaptiveCUDAGraphWrapper(make_model(), FULL, ladder=[4, 8])  # type: ignore[list-item]
