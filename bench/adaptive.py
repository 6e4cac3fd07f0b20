"""Adaptive capture against capturing the whole ladder up front, on a skewed traffic trace.

A trace is a fixed-seed list of request batches (batch size, longest sequence): a few hot
buckets take most of the traffic, the rest of the ladder gets a Zipf-like long tail. The same
trace is replayed through an `EmbeddingRunner` (no HTTP, no batcher) under each policy:

- full ladder: `runner.prewarm(runner.ladder_descriptors())` before the first request (what
  vLLM, SGLang and TGI do at start-up), then every request replays;
- adaptive: nothing captured up front (ready at once); a shape is captured once it has been
  asked for `capture_threshold` times, in the idle gap after that request (the engine's), and
  runs eagerly until then; idle gaps also capture predicted shapes while there is room;
- adaptive, capped: the same with a graph count limit well under the ladder size, so cold
  graphs are evicted.

Reported per policy: time until ready, graphs captured, graph memory, evictions, hit rate over
the trace (per window, plotted) and request latency. On a machine without CUDA the graphs are
mock graphs: a "capture" is the warm-up runs plus one eager run, so the times are CPU times of
that, not of a real CUDA-graph capture. Imports torch, the project's engine and matplotlib only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from app.cudagraph import CacheConfig, CacheSnapshot, CUDAGraphMode
from app.engine.buckets import BatchPlanner
from app.engine.runner import EmbeddingRunner, RunnerConfig
from bench.loadgen import percentile
from bench.plots import plot_hit_rate
from bench.report import ResultsDir, markdown_table
from models import SentenceEncoder, load_sentence_encoder, make_toy_encoder

Shape = tuple[int, int]  # (batch size, longest sequence in tokens)


@dataclass(frozen=True)
class AdaptivePreset:
    capture_sizes: tuple[int, ...] | None  # batch ladder (None: the default ladder)
    max_batch_size: int
    max_seq_len: int  # truncation of the encoder: the top sequence bucket
    seq_buckets: tuple[int, ...]
    trace_len: int
    window: int  # requests per point of the hit-rate curve
    capped_graphs: int  # graph count limit of the "capped" policy
    capture_threshold: int = 2


# A CPU forward of MiniLM costs ~0.1 ms per token on 2 cores, so the CPU presets keep the
# ladder small (the quick one truncates at 64 tokens); the CUDA preset is the service default.
QUICK = AdaptivePreset(
    capture_sizes=(1, 2, 4),
    max_batch_size=4,
    max_seq_len=64,
    seq_buckets=(16, 32, 64),
    trace_len=160,
    window=16,
    capped_graphs=5,
)
FULL_CPU = AdaptivePreset(
    capture_sizes=(1, 2, 4, 8, 16),
    max_batch_size=16,
    max_seq_len=128,
    seq_buckets=(16, 32, 64, 128),
    trace_len=400,
    window=25,
    capped_graphs=10,
)
FULL_CUDA = AdaptivePreset(
    capture_sizes=None,
    max_batch_size=32,
    max_seq_len=256,
    seq_buckets=(16, 32, 64, 128, 256),
    trace_len=1500,
    window=50,
    capped_graphs=16,
)


def full_preset() -> AdaptivePreset:
    return FULL_CUDA if torch.cuda.is_available() else FULL_CPU


def make_trace(
    buckets: Sequence[Shape],
    n: int,
    seed: int = 0,
    *,
    num_hot: int = 3,
    hot_share: float = 0.8,
    zipf_s: float = 1.2,
) -> list[Shape]:
    """`n` request shapes over the ladder `buckets` ((batch, seq_len) rungs).

    `num_hot` buckets, drawn among the smaller half of the ladder where online traffic lives,
    take `hot_share` of the requests (weights 1/2, 1/4, 1/8 ... renormalised); the other buckets
    share the rest with weights 1/rank**zipf_s in a seeded random rank order. Each shape is a
    real (batch, seq_len) inside its bucket (above the next smaller rung), so the runner pads
    it to that bucket as it would in production."""
    if n < 1:
        raise ValueError("trace length must be >= 1")
    if not buckets:
        raise ValueError("empty ladder")
    rng = random.Random(seed)
    buckets = sorted(set(buckets))
    batches = sorted({b for b, _ in buckets})
    seqs = sorted({s for _, s in buckets})
    mid_b, mid_s = batches[(len(batches) - 1) // 2], seqs[(len(seqs) - 1) // 2]
    small = [x for x in buckets if x[0] <= mid_b and x[1] <= mid_s]
    hot = rng.sample(small, min(num_hot, len(small)))
    tail = [x for x in buckets if x not in hot]
    rng.shuffle(tail)
    hot_w = [2.0 ** -(i + 1) for i in range(len(hot))]
    tail_w = [1.0 / (rank + 1) ** zipf_s for rank in range(len(tail))]
    weights = [hot_share * w / sum(hot_w) for w in hot_w]
    if tail:
        weights += [(1.0 - hot_share) * w / sum(tail_w) for w in tail_w]
    chosen = rng.choices(hot + tail, weights=weights, k=n)
    prev_b = dict(zip(batches, [0, *batches], strict=False))
    prev_s = dict(zip(seqs, [2, *seqs], strict=False))
    return [(rng.randint(prev_b[b] + 1, b), rng.randint(prev_s[s] + 1, s)) for b, s in chosen]


def bucket_of(value: int, ladder: Sequence[int]) -> int:
    """The smallest rung at or above `value`."""
    return next(r for r in sorted(ladder) if r >= value)


def shape_token_ids(
    encoder: SentenceEncoder, shape: Shape, rng: random.Random, min_len: int = 2
) -> list[list[int]]:
    """Token ids for one request batch: one row of exactly `seq` tokens (it sets the bucket),
    the others between `min_len` and `seq` (pass the bucket below's size + 1 so the whole batch
    stays in one sequence bucket and the runner does not split it); [CLS] ... [SEP] as the
    tokenizer writes them."""
    batch, seq = shape
    sample = encoder.tokenizer.encode(["a"])[0]
    cls, sep = sample[0], sample[-1]
    vocab = int(encoder.model.config.vocab_size)
    lo = min(1000, vocab // 2)
    rows = []
    for i in range(batch):
        length = seq if i == 0 else rng.randint(min(max(2, min_len), seq), seq)
        rows.append([cls] + [rng.randrange(lo, vocab) for _ in range(length - 2)] + [sep])
    return rows


@dataclass
class PolicyResult:
    name: str
    capture_threshold: int
    max_cached_graphs: int
    ready_seconds: float
    prewarm_captured: int
    captures_total: int
    captures_in_trace: int
    cached_at_end: int
    memory_bytes_end: int
    memory_bytes_peak: int
    evictions: int
    eager_runs: int
    hit_rate_trace: float
    hit_rate_second_half: float
    capture_seconds_in_trace: float
    trace_seconds: float
    request_p50_ms: float
    request_p99_ms: float
    curve_x: list[int]
    curve_hit_rate: list[float]
    curve_cached: list[int]


def _lookups(snap: CacheSnapshot) -> int:
    return snap.hits + snap.misses


def run_policy(
    name: str,
    encoder: SentenceEncoder,
    preset: AdaptivePreset,
    mode: CUDAGraphMode,
    trace_ids: Sequence[list[list[int]]],
    *,
    prewarm_ladder: bool,
    capture_threshold: int,
    max_cached_graphs: int | None,
) -> PolicyResult:
    """Replay the trace under one policy; `max_cached_graphs=None` means the whole ladder."""
    max_tokens = preset.max_batch_size * encoder.max_seq_len
    if max_cached_graphs is None:
        max_cached_graphs = max(1, len(planner(encoder, preset, mode).ladder_descriptors()))
    config = RunnerConfig(
        mode=mode,
        max_batch_size=preset.max_batch_size,
        max_num_tokens=max_tokens,
        capture_sizes=tuple(preset.capture_sizes) if preset.capture_sizes else None,
        seq_buckets=tuple(preset.seq_buckets),
        cache=CacheConfig(max_cached_graphs=max_cached_graphs, capture_threshold=capture_threshold),
    )
    runner = EmbeddingRunner(encoder, config)
    graphs = runner.graphs
    t0 = time.perf_counter()
    prewarm_captured = 0
    if prewarm_ladder:
        report = runner.prewarm(runner.ladder_descriptors())
        prewarm_captured = len(report.captured)
        if report.failed:
            raise RuntimeError(f"{name}: prewarm failed for {report.failed[:3]}")
    ready = time.perf_counter() - t0

    start = graphs.snapshot()
    prev = start
    peak = int(graphs.memory_bytes())
    xs: list[int] = []
    rates: list[float] = []
    cached: list[int] = []
    latencies: list[float] = []
    half = len(trace_ids) // 2
    mid = start
    t_trace = time.perf_counter()
    for i, ids in enumerate(trace_ids, 1):
        t = time.perf_counter()
        runner.run(ids)
        latencies.append(time.perf_counter() - t)
        while runner.idle_work_due(True):  # the engine's idle gap after a low-load request
            runner.idle_capture()
        if i == half:
            mid = graphs.snapshot()
        if i % preset.window == 0 or i == len(trace_ids):
            snap = graphs.snapshot()
            lookups = _lookups(snap) - _lookups(prev)
            hits = snap.hits - prev.hits
            xs.append(i)
            rates.append(hits / lookups if lookups else math.nan)
            cached.append(snap.cached_graphs)
            peak = max(peak, snap.memory_bytes)
            prev = snap
    trace_seconds = time.perf_counter() - t_trace
    end = graphs.snapshot()

    def rate(a: CacheSnapshot, b: CacheSnapshot) -> float:
        lookups = _lookups(b) - _lookups(a)
        return (b.hits - a.hits) / lookups if lookups else math.nan

    ms = [1000.0 * x for x in latencies]
    return PolicyResult(
        name=name,
        capture_threshold=capture_threshold,
        max_cached_graphs=max_cached_graphs,
        ready_seconds=ready,
        prewarm_captured=prewarm_captured,
        captures_total=end.captures,
        captures_in_trace=end.captures - start.captures,
        cached_at_end=end.cached_graphs,
        memory_bytes_end=end.memory_bytes,
        memory_bytes_peak=peak,
        evictions=end.evictions,
        eager_runs=end.eager_runs - start.eager_runs,
        hit_rate_trace=rate(start, end),
        hit_rate_second_half=rate(mid, end),
        capture_seconds_in_trace=end.capture_seconds_total - start.capture_seconds_total,
        trace_seconds=trace_seconds,
        request_p50_ms=percentile(ms, 50),
        request_p99_ms=percentile(ms, 99),
        curve_x=xs,
        curve_hit_rate=rates,
        curve_cached=cached,
    )


def load_encoder(model: str | None, max_seq_len: int) -> SentenceEncoder:
    """`None`: the shipped MiniLM; "toy": the tiny test model; else a model directory."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if model == "toy":
        return make_toy_encoder(device=device)
    return load_sentence_encoder(model, device=device, max_seq_len=max_seq_len)


def planner(encoder: SentenceEncoder, preset: AdaptivePreset, mode: CUDAGraphMode) -> BatchPlanner:
    """The runner's own bucket planner for this preset (its ladder is what prewarm captures)."""
    return BatchPlanner(
        mode,
        max_seq_len=encoder.max_seq_len,
        max_batch_size=preset.max_batch_size,
        max_num_tokens=preset.max_batch_size * encoder.max_seq_len,
        capture_sizes=preset.capture_sizes,
        seq_buckets=preset.seq_buckets,
    )


def run_adaptive_bench(
    preset: AdaptivePreset,
    results: ResultsDir,
    *,
    model: str | None = None,
    mode: CUDAGraphMode = CUDAGraphMode.FULL,
    seed: int = 0,
) -> dict[str, Any]:
    encoder = load_encoder(model, preset.max_seq_len)
    # The trace is drawn over the FULL (batch, seq_len) ladder whatever the mode: it describes
    # traffic, not graphs. Each request batch stays inside one sequence bucket.
    full_ladder = planner(encoder, preset, CUDAGraphMode.FULL).ladder_descriptors()
    buckets = [(int(d.num_reqs or 1), d.num_tokens // int(d.num_reqs or 1)) for d in full_ladder]
    seqs = sorted({s for _, s in buckets})
    trace = make_trace(buckets, preset.trace_len, seed)
    rng = random.Random(seed + 1)
    floor = dict(zip(seqs, [3, *(s + 1 for s in seqs)], strict=False))
    trace_ids = [
        shape_token_ids(encoder, shape, rng, floor[bucket_of(shape[1], seqs)]) for shape in trace
    ]
    ladder = planner(encoder, preset, mode).ladder_descriptors()
    distinct = len(set(trace))
    print(
        f"adaptive: {encoder.name}, mode {mode.name}, ladder {len(ladder)} shapes, trace of "
        f"{len(trace)} requests ({distinct} distinct request shapes)",
        flush=True,
    )
    policies: list[tuple[str, bool, int, int | None]] = [
        ("full ladder", True, 1, None),
        ("adaptive", False, preset.capture_threshold, None),
        ("adaptive, capped", False, preset.capture_threshold, preset.capped_graphs),
    ]
    out: list[PolicyResult] = []
    for name, prewarm, threshold, cap in policies:
        r = run_policy(
            name,
            encoder,
            preset,
            mode,
            trace_ids,
            prewarm_ladder=prewarm,
            capture_threshold=threshold,
            max_cached_graphs=cap,
        )
        print(
            f"  {name:>17}: ready {r.ready_seconds:6.2f} s, captured {r.captures_total:3d}, "
            f"hit rate {100 * r.hit_rate_trace:5.1f}% (2nd half "
            f"{100 * r.hit_rate_second_half:5.1f}%), trace {r.trace_seconds:6.2f} s",
            flush=True,
        )
        out.append(r)
    data = {
        "preset": asdict(preset),
        "model": encoder.name,
        "mode": mode.name,
        "device": str(encoder.device),
        "mock_graphs": not torch.cuda.is_available(),
        "ladder_size": len(ladder),
        "ladder": [[b, s] for b, s in sorted(buckets)],
        "trace_distinct_shapes": distinct,
        "policies": [asdict(r) for r in out],
        "targets": adaptive_targets(out),
    }
    write_adaptive_section(results, data)
    return data


def adaptive_targets(policies: Sequence[PolicyResult]) -> list[dict[str, Any]]:
    by = {p.name: p for p in policies}
    full, ada = by["full ladder"], by["adaptive"]
    frac = ada.ready_seconds / full.ready_seconds if full.ready_seconds > 0 else None
    return [
        {
            "target": "adaptive ready in <= 1/5 of the full ladder's time",
            "value": frac,
            "met": None if frac is None else bool(frac <= 0.2),
        },
        {
            # "reaching" a hit rate: measured once the hot shapes are captured, i.e. over the
            # second half of the trace; the whole-trace figure is in the table next to it.
            "target": "adaptive reaches a hit rate >= 95% (second half of the trace)",
            "value": ada.hit_rate_second_half,
            "met": bool(ada.hit_rate_second_half >= 0.95),
        },
    ]


def write_adaptive_section(results: ResultsDir, data: dict[str, Any]) -> None:
    mib = 1024.0 * 1024.0
    rows = [
        [
            p["name"],
            p["capture_threshold"],
            p["max_cached_graphs"],
            p["ready_seconds"],
            p["captures_total"],
            p["cached_at_end"],
            p["memory_bytes_peak"] / mib,
            p["evictions"],
            100.0 * p["hit_rate_trace"],
            100.0 * p["hit_rate_second_half"],
            p["capture_seconds_in_trace"],
            p["trace_seconds"],
            p["request_p50_ms"],
            p["request_p99_ms"],
        ]
        for p in data["policies"]
    ]
    graphs_note = (
        "mock graphs (no CUDA): a capture is warm-up + one eager run, so times are CPU times "
        "and graph memory is what the mock accounts"
        if data["mock_graphs"]
        else "real CUDA graphs"
    )
    md = [
        "## Adaptive capture against the full ladder\n",
        f"{data['model']} on {data['device']}, mode {data['mode']}, {graphs_note}. Ladder: "
        f"{data['ladder_size']} graphs for the (batch, seq_len) buckets "
        f"{', '.join(f'{b}x{s}' for b, s in data['ladder'])}. "
        f"Trace: {data['preset']['trace_len']} requests, fixed seed, 3 hot buckets take 80%, "
        f"Zipf tail over the rest ({data['trace_distinct_shapes']} distinct request shapes). "
        "Time until ready excludes loading the model (the same for every policy).\n",
        markdown_table(
            [
                "policy",
                "threshold",
                "max graphs",
                "ready s",
                "captured",
                "cached at end",
                "peak graph MiB",
                "evictions",
                "hit rate %",
                "2nd half %",
                "capture s in trace",
                "trace s",
                "p50 ms",
                "p99 ms",
            ],
            rows,
        ),
        "\nTargets (issue 6):\n",
        markdown_table(
            ["target", "measured", "met"],
            [[t["target"], t["value"], t["met"]] for t in data["targets"]],
        ),
        "\n![hit rate over the trace](adaptive.png)\n",
    ]
    results.write_section("adaptive", "\n".join(md), data)
    pol = data["policies"]
    plot_hit_rate(
        {p["name"]: (p["curve_x"], p["curve_hit_rate"]) for p in pol},
        results.path / "adaptive.png",
        captured={p["name"]: (p["curve_x"], p["curve_cached"]) for p in pol},
    )
