"""Runner latency per (batch, seq_len) bucket: `python -m bench.engine [--quick]`.

For every bucket (batch 1..64, seq_len 16..256; `--quick`: a small subset) it times
`EmbeddingRunner.run` on a synthetic batch of exactly that shape (token ids in, embeddings on
the CPU out: host copies included) in NONE, FULL and PIECEWISE, and on CUDA also the raw
`torch.cuda.CUDAGraph.replay()` of the very FULL graph the runner captured (synchronised), i.e.
the floor the runner's own overhead sits on. The first call of a shape runs eagerly and the shape
is captured right after (the engine's idle gap); the timed calls are replays. Each point: median
and p90 over up to `max_repeats` calls (fewer once `budget_s` is spent, never fewer than
`min_repeats`); the modes are timed interleaved, one call each per
round, so a load that drifts during the run (a shared machine) biases none of them.

On a CPU the graphs are mock graphs (a replay re-runs the captured function and copies into the
static output), so FULL/PIECEWISE there measure padding and bookkeeping, not kernel-launch
savings. `bench_engine()` returns the rows (plain dicts) for `python -m bench engine`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from app.cudagraph import BatchDescriptor, CacheConfig, CUDAGraphMode
from app.engine.runner import EmbeddingRunner, RunnerConfig
from models import SentenceEncoder, load_sentence_encoder, make_toy_encoder

MODES = (CUDAGraphMode.NONE, CUDAGraphMode.FULL, CUDAGraphMode.PIECEWISE)
RAW = "RAW_REPLAY"


@dataclass(frozen=True)
class EnginePreset:
    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    max_repeats: int
    min_repeats: int
    budget_s: float  # per bucket and mode


QUICK = EnginePreset((1, 8, 32), (16, 64, 256), max_repeats=10, min_repeats=3, budget_s=1.5)
FULL_SWEEP = EnginePreset(
    (1, 2, 4, 8, 16, 32, 64), (16, 32, 64, 128, 256), max_repeats=20, min_repeats=3, budget_s=3.0
)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty sample."""
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def synthetic_batch(
    encoder: SentenceEncoder, batch: int, seq_len: int, seed: int
) -> list[list[int]]:
    """`batch` requests of exactly `seq_len` ids: the text's first and last special tokens
    around random ordinary ids (deterministic for a seed)."""
    specials = encoder.tokenizer.encode([""])[0]  # e.g. [CLS] [SEP]
    rng = random.Random(seed)
    low = max(specials) + 1
    high = encoder.tokenizer.vocab_size - 1
    inner = seq_len - len(specials)
    return [
        specials[:1] + [rng.randint(low, high) for _ in range(inner)] + specials[1:]
        for _ in range(batch)
    ]


def _time_calls(fn: Callable[[], object], preset: EnginePreset, sync: bool) -> list[float]:
    samples: list[float] = []
    spent = 0.0
    while len(samples) < preset.max_repeats and (
        len(samples) < preset.min_repeats or spent < preset.budget_s
    ):
        t0 = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        samples.append(dt * 1e3)
        spent += dt
    return samples


def _raw_replay_ms(
    runner: EmbeddingRunner, descriptor: BatchDescriptor, preset: EnginePreset
) -> list[float] | None:
    """Raw CUDAGraph.replay() of the FULL graph the runner captured for `descriptor`."""
    if runner.mode is not CUDAGraphMode.FULL or runner.device.type != "cuda":
        return None
    entry = runner.graphs.entry_for(descriptor)  # the graph the runner replays for it
    if entry is None:
        return None
    graph: Any = entry.pieces[0].graph
    return _time_calls(graph.replay, preset, sync=True)


def bench_engine(
    *,
    quick: bool = False,
    preset: EnginePreset | None = None,
    encoder: SentenceEncoder | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    modes: Sequence[CUDAGraphMode] = MODES,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (batch, seq_len): `<MODE>_ms` / `<MODE>_p90_ms` (None where not measured),
    plus `RAW_REPLAY_ms` / `RAW_REPLAY_p90_ms` on CUDA."""
    preset = preset or (QUICK if quick else FULL_SWEEP)
    encoder = encoder or load_sentence_encoder(device=device, dtype=dtype)
    seq_lens = [s for s in preset.seq_lens if s <= encoder.max_seq_len]
    buckets = [(b, s) for b in preset.batch_sizes for s in seq_lens]
    max_batch = max(preset.batch_sizes)
    on_cuda = encoder.device.type == "cuda"
    rows: dict[tuple[int, int], dict[str, Any]] = {
        (b, s): {"batch": b, "seq_len": s, "tokens": b * s} for b, s in buckets
    }
    names = [m.name for m in modes] + ([RAW] if on_cuda else [])
    for row in rows.values():
        for name in names:
            row[f"{name}_ms"] = row[f"{name}_p90_ms"] = None
    # One runner per mode, measured interleaved (one call of each mode per round), so a load
    # that drifts over the run (a shared machine) hits every mode alike.
    runners = {
        mode: EmbeddingRunner(
            encoder,
            RunnerConfig(
                mode=mode,
                max_batch_size=max_batch,
                max_num_tokens=max_batch * max(seq_lens),
                cache=CacheConfig(
                    max_cached_graphs=max(64, len(buckets)),
                    capture_threshold=1,
                    idle_prewarm_top_k=0,  # only the measured shapes
                ),
            ),
        )
        for mode in modes
    }
    for b, s in sorted(buckets, key=lambda x: -x[0] * x[1]):  # largest first, as a prewarm
        ids = synthetic_batch(encoder, b, s, seed=b * 1000 + s)
        for runner in runners.values():
            runner.run(ids)  # first sight: eager, the shape becomes due
            while runner.idle_work_due(True):  # what the engine does in the next idle gap
                runner.idle_capture()
            runner.run(ids)
        samples: dict[CUDAGraphMode, list[float]] = {mode: [] for mode in modes}
        spent = 0.0
        rounds = 0
        while rounds < preset.max_repeats and (
            rounds < preset.min_repeats or spent < preset.budget_s * len(modes)
        ):
            for mode, runner in runners.items():
                t0 = time.perf_counter()
                runner.run(ids)  # returns CPU tensors: already synchronised on CUDA
                dt = time.perf_counter() - t0
                samples[mode].append(dt * 1e3)
                spent += dt
            rounds += 1
        row = rows[(b, s)]
        for mode in modes:
            row[f"{mode.name}_ms"] = percentile(samples[mode], 50)
            row[f"{mode.name}_p90_ms"] = percentile(samples[mode], 90)
        full = runners.get(CUDAGraphMode.FULL)
        if full is not None:
            raw = _raw_replay_ms(full, full.descriptor_for_shape(b, s), preset)
            if raw is not None:
                row[f"{RAW}_ms"] = percentile(raw, 50)
                row[f"{RAW}_p90_ms"] = percentile(raw, 90)
        if log is not None:
            cells = ", ".join(f"{n} {row[f'{n}_ms']:.2f}" for n in names if row[f"{n}_ms"])
            log(f"{b:3d} x {s:3d}: {cells} ms")
    return [rows[k] for k in buckets]


def machine_description(device: str = "cpu") -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, real CUDA graphs"
    cpu = platform.processor() or platform.machine()
    return (
        f"{os.cpu_count()}-core CPU ({cpu}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, mock graphs"
    )


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per bucket, median (p90) ms per mode."""
    names = [k[:-3] for k in rows[0] if k.endswith("_ms") and not k.endswith("_p90_ms")]
    head = "| batch | seq_len | " + " | ".join(f"{n} ms p50 (p90)" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    for r in rows:
        cells = []
        for n in names:
            med, p90 = r[f"{n}_ms"], r[f"{n}_p90_ms"]
            cells.append("-" if med is None else f"{med:.2f} ({p90:.2f})")
        lines.append(f"| {r['batch']} | {r['seq_len']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="batch 1, 8, 32 x seq 16, 64, 256")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--toy", action="store_true", help="the toy model instead of MiniLM")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)"
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    encoder = (
        make_toy_encoder(args.device, dtype)
        if args.toy
        else load_sentence_encoder(device=args.device, dtype=dtype)
    )

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    rows = bench_engine(quick=args.quick, encoder=encoder, log=log)
    print(f"# Runner latency per bucket: {encoder.name}, {args.dtype}")
    print(f"Machine: {machine_description(args.device)}\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine_description(args.device), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
