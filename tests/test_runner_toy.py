"""The runner's mechanics on the toy model (fast): parity with eager, isolation, padding,
copy-out of graph memory, real replays, splitting, prewarm, cache limits, deferred captures."""

from __future__ import annotations

import random

import pytest
import torch
from runner_support import capture_due

from app.cudagraph import BatchDescriptor, CacheConfig, CUDAGraphMode
from app.engine.runner import EmbeddingRunner, RunnerConfig
from models import make_toy_encoder

MODES = [CUDAGraphMode.NONE, CUDAGraphMode.PIECEWISE, CUDAGraphMode.FULL]
GRAPH_MODES = [CUDAGraphMode.PIECEWISE, CUDAGraphMode.FULL]


@pytest.fixture(scope="module")
def toy():
    return make_toy_encoder()


CACHE_FIELDS = set(CacheConfig.__dataclass_fields__)


def make_runner(toy, mode, **kw):
    """Captures after one lookup and no idle prediction unless asked: deterministic counts."""
    cache = {"capture_threshold": 1, "idle_prewarm_top_k": 0}
    cache.update({k: v for k, v in kw.items() if k in CACHE_FIELDS})
    cfg = dict(max_batch_size=8, max_num_tokens=256)
    cfg.update({k: v for k, v in kw.items() if k not in CACHE_FIELDS})
    return EmbeddingRunner(toy, RunnerConfig(mode=mode, cache=CacheConfig(**cache), **cfg))


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = ["graph", "cuda", "a", "replay", "token", "bert", "x", "padding!", "42", "mean"]
    return [" ".join(rng.choices(words, k=rng.randint(0, 20))) for _ in range(n)]


def ids_of(toy, texts):
    return toy.tokenizer.encode(texts)


@pytest.mark.parametrize("mode", MODES)
def test_matches_eager_in_input_order(toy, mode):
    texts = random_texts(19, seed=1) + ["z" * 100]  # one truncated at 64 tokens
    ref = toy.embed(texts)
    runner = make_runner(toy, mode)
    for _ in range(3):  # miss (eager, captured in the gap after) then replays
        res = runner.run(ids_of(toy, texts))
        assert res.embeddings.shape == (20, 32) and res.embeddings.dtype == torch.float32
        assert res.embeddings.device.type == "cpu"
        torch.testing.assert_close(res.embeddings, ref, atol=1e-5, rtol=0)
        capture_due(runner)
    if mode is not CUDAGraphMode.NONE:
        assert runner.graphs.snapshot().hits == 2 * len(res.descriptors)
    assert res.real_tokens == sum(len(x) for x in ids_of(toy, texts))
    assert res.padded_tokens >= res.real_tokens
    if mode is CUDAGraphMode.NONE:
        assert res.padded_tokens == res.real_tokens


@pytest.mark.parametrize("mode", MODES)
def test_one_request_matches_eager(toy, mode):
    """One request is the common case at low load (NONE runs it unpacked, at its own length)."""
    runner = make_runner(toy, mode)
    for text in random_texts(6, seed=9) + ["z" * 100]:
        res = runner.run(ids_of(toy, [text]))
        torch.testing.assert_close(res.embeddings, toy.embed([text]), atol=1e-5, rtol=0)
        if mode is CUDAGraphMode.NONE:
            assert res.padded_tokens == res.real_tokens == len(ids_of(toy, [text])[0])


@pytest.mark.parametrize("mode", MODES)
def test_isolation_alone_vs_batched(toy, mode):
    """A request's embedding does not depend on its neighbours or on the bucket it lands in."""
    runner = make_runner(toy, mode)
    target = "the target sentence"
    alone = runner.run(ids_of(toy, [target])).embeddings[0]
    for seed, n in [(2, 1), (3, 3), (4, 7), (5, 12)]:
        others = random_texts(n, seed)
        texts = others[: n // 2] + [target] + others[n // 2 :]
        res = runner.run(ids_of(toy, texts))
        got = res.embeddings[n // 2]
        assert (got - alone).abs().max() <= 1e-5, (seed, res.descriptors)


def test_same_request_agrees_across_modes(toy):
    texts = random_texts(11, seed=6)
    outs = [make_runner(toy, m).run(ids_of(toy, texts)).embeddings for m in MODES]
    for other in outs[1:]:
        assert (other - outs[0]).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", MODES)
def test_results_are_copied_out_of_graph_memory(toy, mode):
    """A replay overwrites the graph output: results handed out earlier must not change."""
    runner = make_runner(toy, mode)
    a = ids_of(toy, ["first batch one", "first batch two"])
    b = ids_of(toy, ["other words her", "completely else"])
    assert [len(x) for x in a] == [len(x) for x in b]  # same shape: the same graph replays
    first = runner.run(a).embeddings
    kept = first.clone()
    second = runner.run(b).embeddings
    runner.run(b)
    assert torch.equal(first, kept)
    assert not torch.allclose(first, second)
    # one request: its row must not be handed out as graph memory either
    one = runner.run(a[:1]).embeddings
    kept_one = one.clone()
    runner.run(b[:1])
    assert torch.equal(one, kept_one)
    assert torch.allclose(one, kept[:1], atol=1e-5)


def test_padding_never_leaks_piecewise(toy):
    """Stale or garbage values in the static buffers' padding rows never reach real rows."""
    runner = make_runner(toy, CUDAGraphMode.PIECEWISE)
    texts = random_texts(5, seed=7)
    ref = toy.embed(texts)
    runner.run(ids_of(toy, texts))
    assert capture_due(runner) == 1
    for buf in (*runner._hidden, runner._attn):
        buf.fill_(float("nan"))
    res = runner.run(ids_of(toy, texts))  # replay over poisoned buffers
    assert res.padded_tokens > res.real_tokens  # there are padding rows
    assert torch.isfinite(res.embeddings).all()
    torch.testing.assert_close(res.embeddings, ref, atol=1e-5, rtol=0)


def test_padding_never_leaks_full(toy):
    """Garbage ids past each request (and in padding rows) are masked out."""
    runner = make_runner(toy, CUDAGraphMode.FULL)
    short = ids_of(toy, ["ab", "abc"])
    ref = runner.run(short).embeddings.clone()
    # A longer batch of the same bucket leaves other ids in the static buffer first.
    runner.run(ids_of(toy, ["qwertyuiop", "asdfghjkl"]))
    torch.testing.assert_close(runner.run(short).embeddings, ref, atol=0, rtol=0)


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_repeated_batches_are_replays(toy, mode):
    runner = make_runner(toy, mode)
    ids = ids_of(toy, ["a", "bb cc", "graph replay", "cuda graph", "x y z", "padding"])
    first = runner.run(ids)
    assert len(first.descriptors) == 1
    capture_due(runner)
    before = runner.graphs.snapshot()
    assert before.captures == 1 and before.misses == 1
    for _ in range(5):
        res = runner.run(ids)
        assert res.descriptors == first.descriptors
    after = runner.graphs.snapshot()
    assert after.replays - before.replays == 5
    assert after.hits - before.hits == 5
    assert after.misses == before.misses and after.captures == before.captures
    assert after.eager_runs == 1  # only the first sight, answered before its capture
    assert runner.graphs.get_cached_descriptors() == first.descriptors
    entry = runner.graphs.entry_for(first.descriptors[0])
    assert entry is not None and entry.replay_count == 5
    if mode is CUDAGraphMode.PIECEWISE:
        # one entry, a graph for every piece, one lookup per forward
        assert runner.graphs.pieces == toy.model.config.num_hidden_layers + 1
        assert len(entry.pieces) == runner.graphs.pieces
        assert first.descriptors[0].num_reqs is None  # relaxed: token bucket only
    else:
        d = first.descriptors[0]
        assert d.num_reqs == 8 and d.num_tokens % 8 == 0


def test_full_shapes_with_equal_tokens_are_distinct_graphs(toy):
    runner = make_runner(toy, CUDAGraphMode.FULL)
    runner.run(ids_of(toy, ["a" * 40] * 2))  # 2 x 64 = 128 tokens
    runner.run(ids_of(toy, ["a" * 20] * 4))  # 4 x 32 = 128 tokens
    assert capture_due(runner) == 2
    cached = runner.graphs.get_cached_descriptors()
    assert sorted((d.num_tokens, d.num_reqs) for d in cached) == [(128, 2), (128, 4)]


@pytest.mark.parametrize("mode", MODES)
def test_over_large_batch_is_split(toy, mode):
    texts = random_texts(30, seed=9) + ["y" * 80] * 6
    ref = toy.embed(texts)
    runner = make_runner(toy, mode)  # at most 8 requests and 256 tokens per forward
    res = runner.run(ids_of(toy, texts))
    assert len(res.descriptors) >= 5
    assert all(d.num_tokens <= 256 for d in res.descriptors)
    torch.testing.assert_close(res.embeddings, ref, atol=1e-5, rtol=0)


def test_invalid_input(toy):
    runner = make_runner(toy, CUDAGraphMode.FULL)
    empty = runner.run([])
    assert empty.embeddings.shape == (0, 32) and empty.descriptors == []
    with pytest.raises(ValueError, match="request 1 has 0 tokens"):
        runner.run([[2, 3], []])
    with pytest.raises(ValueError, match="65 tokens"):
        runner.run([[2] * 65])


@pytest.mark.parametrize("mode", MODES)
def test_descriptor_for_shape_is_what_run_uses(toy, mode):
    runner = make_runner(toy, mode)
    for batch, seq in [(1, 5), (3, 17), (8, 30)]:
        res = runner.run([[2] + [10] * (seq - 2) + [3]] * batch)
        assert res.descriptors == [runner.descriptor_for_shape(batch, seq)]
    with pytest.raises(ValueError):
        runner.descriptor_for_shape(9, 10)


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_prewarm_ladder_then_only_hits(toy, mode):
    runner = make_runner(toy, mode)
    ladder = runner.ladder_descriptors()
    report = runner.prewarm(ladder)
    assert report.failed == [] and report.skipped == []
    assert report.captured == sorted(ladder, key=BatchDescriptor.sort_key, reverse=True)
    assert runner.graphs.get_hot_shapes(10) == []  # prewarm does not count as traffic
    assert runner.graphs.snapshot().misses == 0
    texts = random_texts(20, seed=10)
    ref = toy.embed(texts)
    for _ in range(2):
        res = runner.run(ids_of(toy, texts))
        torch.testing.assert_close(res.embeddings, ref, atol=1e-5, rtol=0)
    snap = runner.graphs.snapshot()
    assert snap.misses == 0 and snap.captures == len(ladder)
    assert snap.hits == 2 * len(res.descriptors)
    again = runner.prewarm(ladder[:2])
    assert again.captured == [] and len(again.skipped) == 2


def test_prewarm_rejects_shapes_off_the_ladder(toy):
    full = make_runner(toy, CUDAGraphMode.FULL)
    report = full.prewarm([BatchDescriptor(48, 3), BatchDescriptor(32, 2)])
    assert report.captured == [BatchDescriptor(32, 2)]
    assert [d for d, _ in report.failed] == [BatchDescriptor(48, 3)]
    assert "t48_r3 is not a shape of this runner's ladder" in report.failed[0][1]
    pw = make_runner(toy, CUDAGraphMode.PIECEWISE)
    # PIECEWISE keys by the token count, as lookups do: (64, 4) is the bucket 64
    report = pw.prewarm([BatchDescriptor(50), BatchDescriptor(64, 4)])
    assert report.captured == [BatchDescriptor(64)]
    assert "t50 is not a shape of this runner's ladder" in report.failed[0][1]
    none = make_runner(toy, CUDAGraphMode.NONE)
    assert none.ladder_descriptors() == []
    assert none.prewarm([BatchDescriptor(64)]).skipped == [BatchDescriptor(64)]


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_cache_limits_pass_through(toy, mode):
    runner = make_runner(toy, mode, max_cached_graphs=2, min_replays_to_keep=0)
    assert runner.graphs.config.max_cached_graphs == 2
    batches = [ids_of(toy, ["a" * k] * b) for k, b in [(5, 1), (20, 3), (40, 5), (60, 2)]]
    results = [runner.run(b) for b in batches]
    refs = [r.embeddings for r in results]
    assert capture_due(runner) == len({d for r in results for d in r.descriptors}) >= 4
    for b, ref in zip(batches, refs, strict=True):
        torch.testing.assert_close(runner.run(b).embeddings, ref, atol=1e-6, rtol=0)
    snap = runner.graphs.snapshot()
    assert snap.cached_graphs <= 2 and snap.evictions >= 2


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_capture_threshold_runs_eager_first(toy, mode):
    runner = make_runner(toy, mode, capture_threshold=2)
    ids = ids_of(toy, ["threshold test"])
    ref = toy.embed(["threshold test"])
    # lookups 1 and 2 run eagerly; the 2nd crosses the threshold and is captured in the gap
    for expected_pending, expected_captures in ((0, 0), (1, 1), (0, 1)):
        torch.testing.assert_close(runner.run(ids).embeddings, ref, atol=1e-5, rtol=0)
        assert runner.graphs.snapshot().pending_captures == expected_pending
        capture_due(runner)
        assert runner.graphs.snapshot().captures == expected_captures
    snap = runner.graphs.snapshot()
    assert (snap.eager_runs, snap.hits) == (2, 1)


@pytest.mark.parametrize("mode", GRAPH_MODES)
def test_a_crossing_waits_for_a_gap_unless_it_waited_too_long(toy, mode):
    runner = make_runner(toy, mode, max_capture_delay_s=3600.0)
    runner.run(ids_of(toy, ["deferred"]))
    assert runner.idle_work_due(True) and not runner.idle_work_due(False)
    assert runner.idle_capture(idle=False) is None  # under load, not yet
    step = runner.idle_capture(idle=True)
    assert step is not None and step.outcome == "captured"
    hurried = make_runner(toy, mode, max_capture_delay_s=0.0)
    hurried.run(ids_of(toy, ["deferred"]))
    assert hurried.idle_work_due(False)  # overdue: captured between batches even under load
    step = hurried.idle_capture(idle=False)
    assert step is not None and step.outcome == "captured"


def test_memory_budget_is_one_for_all_pieces(toy):
    runner = make_runner(toy, CUDAGraphMode.PIECEWISE, memory_budget_bytes=3_000_000)
    assert runner.graphs.config.memory_budget_bytes == 3_000_000
    runner.run(ids_of(toy, ["budget"]))
    capture_due(runner)
    (info,) = runner.graphs.cached_entries()
    entry = runner.graphs.entry_for(info.descriptor)
    assert entry is not None and len(entry.pieces) == runner.graphs.pieces
    # the entry is charged the memory of all its pieces against the one budget
    assert info.memory_bytes == sum(p.memory_bytes for p in entry.pieces)
    assert runner.graphs.memory_bytes() == info.memory_bytes
    full = make_runner(toy, CUDAGraphMode.FULL, memory_budget_bytes=1234)
    assert full.graphs.config.memory_budget_bytes == 1234


def test_full_layout_of_ids_mask_and_padding_rows(toy):
    runner = make_runner(toy, CUDAGraphMode.FULL)
    pad = runner.pad_id
    ids, mask = runner._fill_full(3, 4, [[5, 6, 7], [8, 9]])
    # real rows left-aligned, padded with the pad id; the padding row is a length-1 dummy
    assert ids.tolist() == [[5, 6, 7, pad], [8, 9, pad, pad], [pad, pad, pad, pad]]
    assert mask.tolist() == [
        [True, True, True, False],
        [True, True, False, False],
        [True, False, False, False],
    ]
    # the views are the static buffers the graphs read, not copies
    assert ids.data_ptr() == runner._ids.data_ptr()
    assert mask.data_ptr() == runner._mask.data_ptr()


def test_full_layout_refuses_a_row_longer_than_its_bucket(toy):
    runner = make_runner(toy, CUDAGraphMode.FULL)
    with pytest.raises(ValueError, match="does not fit a \\(1, 4\\) bucket"):
        runner._fill_full(1, 4, [[1, 2, 3, 4, 5]])
