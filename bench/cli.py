"""`python -m bench ...` (or `make bench`): run benchmarks, write results + plots.

    python -m bench engine   [--quick] [--out DIR]   runner per bucket, NONE/FULL/PIECEWISE
    python -m bench service  [--quick] [--out DIR]   sidecar vs two baselines over HTTP
    python -m bench adaptive [--quick] [--out DIR]   adaptive capture vs the full ladder
    python -m bench overhead [--quick] [--out DIR]   wrapper hit-path overhead
    python -m bench all      [--quick] [--out DIR]   all four, one results.md

Every subcommand adds its section to DIR/results.md and DIR/results.json (other sections in DIR
are kept) and writes its PNG plots to DIR. Only `service` needs the web stack (fastapi,
uvicorn); it is imported lazily so the others run on a GPU box without it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

from app.devices import device_name
from bench.report import ResultsDir, markdown_table

SUBCOMMANDS = ("engine", "service", "adaptive", "overhead")
RAW = "RAW_REPLAY"  # bench.engine's name for raw torch.cuda.CUDAGraph.replay()


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _device_name(text: str) -> str:
    # The names SIDECAR_DEVICE accepts (app.devices: no pydantic, so GPU boxes can parse them).
    try:
        return device_name(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, cpu, cuda or cuda:N, got {text!r}"
        ) from None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("SIDECAR_"):
        raise argparse.ArgumentTypeError(f"expected SIDECAR_NAME=VALUE, got {text!r}")
    return key, value


def build_parser(prog: str = "python -m bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Benchmarks of the CUDA-graph sidecar (tables + PNG plots)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--quick", action="store_true", help="small preset, about a minute")
        p.add_argument(
            "--out", default="bench-results", help="results folder (default: %(default)s)"
        )
        return p

    add("engine", "runner latency per bucket in NONE/FULL/PIECEWISE (+ raw replay on CUDA)")
    s = add("service", "the sidecar against a naive and a sentence-transformers server")
    a = add("adaptive", "adaptive capture against capturing the whole ladder")
    add("overhead", "hit-path overhead of the graph wrapper over a direct call")
    every = add("all", "engine, service, adaptive and overhead")
    w = add("workers", "CPU per request with 1, 2, ... front-end processes (toy model, 32 clients)")
    w.add_argument("--sweep", default="1,2", help="SIDECAR_WORKERS values (default: %(default)s)")
    w.add_argument(
        "--model", default="toy", help="model dir, 'default' (MiniLM) or 'toy' (the default)"
    )
    w.add_argument("--clients", type=int, default=32, help="closed-loop clients (default 32)")
    w.add_argument("--requests", type=int, help="measured requests per value (default 3000)")
    r = add("rerank", "the sidecar's /rerank against a CrossEncoder.predict server (8 clients)")
    r.add_argument("--threads", type=int, default=2, help="torch threads in both servers")
    r.add_argument("--requests", type=int, help="measured requests per server and round")
    r.add_argument("--rounds", type=int, help="rounds per server, pooled (full preset: 2)")
    r.add_argument(
        "--model",
        default=None,
        help="cross-encoder dir (default: an ms-marco-MiniLM-L-6-v2-sized one, built once)",
    )
    r.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        default="auto",
        help="the sidecar's SIDECAR_DTYPE (auto: as the sidecar resolves it)",
    )
    r.add_argument(
        "--ce-dtype",
        choices=("float32", "float16", "bfloat16"),
        default="float32",
        help="the CrossEncoder server's dtype (default: float32, as users first run it)",
    )
    r.add_argument(
        "--sidecar-env",
        type=_key_value,
        action="append",
        default=[],
        metavar="SIDECAR_X=V",
        help="extra sidecar setting for the run (repeatable)",
    )
    for p in (s, every):
        p.add_argument("--threads", type=int, default=2, help="torch threads in every server")
        p.add_argument(
            "--transport",
            choices=("raw", "httpx"),
            default="raw",
            help="load generator client (raw: HTTP/1.1 on asyncio streams, ~20x less client CPU)",
        )
        p.add_argument(
            "--omp-active",
            action="store_true",
            help="leave OpenMP's default spin-waiting (default: OMP_WAIT_POLICY=PASSIVE in all)",
        )
        p.add_argument("--concurrency", type=_int_list, help="client counts, e.g. 1,8,32,128")
        p.add_argument("--requests", type=int, help="measured requests per server and level")
        p.add_argument("--rounds", type=int, help="rounds per server, pooled (full preset: 2)")
        p.add_argument(
            "--graph-mode",
            choices=("auto", "NONE", "PIECEWISE", "FULL"),
            default="auto",
            help="the sidecar's SIDECAR_GRAPH_MODE and the raw runner's (auto: FULL on CUDA, "
            "NONE on a CPU, where mock graphs save nothing and padding/captures cost)",
        )
        p.add_argument(
            "--max-batch-size", type=int, default=32, help="the sidecar's SIDECAR_MAX_BATCH_SIZE"
        )
        p.add_argument(
            "--device",
            type=_device_name,
            default="auto",
            help="auto, cpu, cuda or cuda:N: device of every server and the raw runner "
            "(auto: cuda where available)",
        )
        p.add_argument(
            "--dtype",
            choices=("auto", "float32", "float16", "bfloat16"),
            default="auto",
            help="dtype of every server (auto, as the sidecar: float16 on cuda, bfloat16 on a cpu "
            "with native bfloat16, else float32)",
        )
        p.add_argument(
            "--st-dtype",
            choices=("same", "float32", "float16", "bfloat16"),
            default="float32",
            help="dtype of the sentence-transformers server: float32 (the default: the server as "
            "users first write it, which never casts) or same (cast to every server's dtype, to "
            "compare serving alone)",
        )
        p.add_argument(
            "--servers",
            default="sidecar,naive,st",
            help="which servers, in order (sidecar, naive, st; default: %(default)s)",
        )
        p.add_argument(
            "--sidecar-env",
            type=_key_value,
            action="append",
            default=[],
            metavar="SIDECAR_X=V",
            help="extra sidecar setting for the run (repeatable)",
        )
    for p in (s, a, every):
        p.add_argument("--model", default=None, help="model dir, or 'toy' (default: MiniLM)")
    for p in (a, every):
        p.add_argument("--trace-len", type=int, help="requests in the adaptive trace")
    return parser


def run_engine(args: argparse.Namespace, results: ResultsDir) -> None:
    """The runner's per-bucket benchmark (bench.engine) with ratios, a table and a plot."""
    import torch

    from bench import engine
    from bench.plots import plot_engine_latency

    cuda = torch.cuda.is_available()
    if args.quick:
        # On a 2-core CPU a 32x256 MiniLM forward alone takes seconds: the CPU quick preset keeps
        # to small buckets; on CUDA the runner's own quick preset is fast enough.
        preset = (
            engine.QUICK
            if cuda
            else engine.EnginePreset(
                (1, 4, 16), (16, 64), max_repeats=8, min_repeats=3, budget_s=0.5
            )
        )
    else:
        preset = engine.FULL_SWEEP
    rows = engine.bench_engine(
        preset=preset, device="cuda" if cuda else "cpu", log=lambda line: print(line, flush=True)
    )
    for row in rows:
        none, full, piece, raw = (row.get(f"{m}_ms") for m in ("NONE", "FULL", "PIECEWISE", RAW))
        row["FULL_over_NONE"] = _ratio(full, none)
        row["PIECEWISE_over_NONE"] = _ratio(piece, none)
        row["FULL_over_RAW"] = _ratio(full, raw)
    modes = ["NONE", "FULL", "PIECEWISE"] + ([RAW] if cuda else [])
    table = [
        [f"{r['batch']}x{r['seq_len']}"]
        + [_p50_p90(r, m) for m in modes]
        + [r["FULL_over_NONE"], r["PIECEWISE_over_NONE"]]
        + ([r["FULL_over_RAW"]] if cuda else [])
        for r in rows
    ]
    headers = (
        ["bucket (BxS)"]
        + [f"{m} ms p50 (p90)" for m in modes]
        + ["FULL / NONE", "PIECEWISE / NONE"]
        + (["FULL runner / raw replay"] if cuda else [])
    )
    graphs = (
        "real CUDA graphs"
        if cuda
        else "mock graphs (no CUDA): a replay re-runs the captured forward, so FULL and "
        "PIECEWISE measure padding and bookkeeping, not launch savings; no raw replay exists"
    )
    md = [
        "## Engine: runner latency per bucket\n",
        f"`bench.engine.bench_engine`: `EmbeddingRunner.run` on a synthetic batch of exactly "
        f"each shape, {graphs}. Median (p90) over {preset.min_repeats} to {preset.max_repeats} "
        "calls after a capture and a warm call. A ratio below 1 means faster than eager.\n",
        markdown_table(headers, table),
    ]
    first = next((r for r in rows if r["batch"] == 1 and r["seq_len"] == 16), None)
    targets: list[list[object]] = []
    if cuda and first is not None:
        speedup = _ratio(first["NONE_ms"], first["FULL_ms"])
        targets.append(
            [
                "FULL at 1x16 >= 3x faster than eager",
                speedup,
                None if speedup is None else speedup >= 3.0,
            ]
        )
    elif not cuda:
        targets.append(["FULL at 1x16 >= 3x faster than eager (CUDA only)", None, None])
    md += ["\nTargets (issue 6):\n", markdown_table(["target", "measured", "met"], targets)]
    md.append("\n![engine latency](engine.png)\n")
    results.write_section("engine", "\n".join(md), {"preset": asdict(preset), "rows": rows})
    plot_engine_latency(
        [f"{r['batch']}x{r['seq_len']}" for r in rows],
        {("raw replay" if m == RAW else m): [r[f"{m}_ms"] for r in rows] for m in modes},
        results.path / "engine.png",
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _p50_p90(row: dict[str, Any], mode: str) -> str:
    med, p90 = row.get(f"{mode}_ms"), row.get(f"{mode}_p90_ms")
    return "—" if med is None else f"{med:.2f} ({p90:.2f})"


def run_service(args: argparse.Namespace, results: ResultsDir) -> None:
    from bench import service

    preset = service.QUICK if args.quick else service.FULL
    if args.concurrency:
        preset = replace(preset, concurrencies=args.concurrency)
    if args.requests:
        preset = replace(preset, requests=args.requests)
    if args.rounds:
        preset = replace(preset, rounds=args.rounds)
    names = {"sidecar": service.SIDECAR, "naive": service.NAIVE, "st": service.ST}
    try:
        servers = tuple(names[n.strip()] for n in args.servers.split(",") if n.strip())
    except KeyError as exc:
        raise SystemExit(f"unknown server {exc}; choose from {sorted(names)}") from None
    opts = service.ServiceOptions(
        preset=preset,
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        graph_mode=args.graph_mode,
        servers=servers,
        sidecar_env=dict(args.sidecar_env),
        model=args.model,
        omp_passive=not args.omp_active,
        transport=args.transport,
        device=args.device,
        dtype=args.dtype,
        st_dtype=args.st_dtype,
    )
    service.run_service_bench(opts, results)


def run_rerank(args: argparse.Namespace, results: ResultsDir) -> None:
    from bench import rerank

    preset = rerank.RERANK_QUICK if args.quick else rerank.RERANK_FULL
    if args.requests:
        preset = replace(preset, requests=args.requests)
    if args.rounds:
        preset = replace(preset, rounds=args.rounds)
    opts = rerank.RerankOptions(
        preset=preset,
        model=args.model,
        threads=args.threads,
        dtype=args.dtype,
        ce_dtype=args.ce_dtype,
        sidecar_env=dict(args.sidecar_env),
    )
    rerank.run_rerank_bench(opts, results)


def run_adaptive(args: argparse.Namespace, results: ResultsDir) -> None:
    from bench import adaptive

    preset = adaptive.QUICK if args.quick else adaptive.full_preset()
    if getattr(args, "trace_len", None):
        preset = replace(preset, trace_len=args.trace_len)
    adaptive.run_adaptive_bench(preset, results, model=getattr(args, "model", None))


def run_overhead(args: argparse.Namespace, results: ResultsDir) -> None:
    """The graph manager's own benchmark (bench.wrapper_overhead), as a results section."""
    from bench import wrapper_overhead

    # 10,000 calls is the benchmark's floor for a stable median; the full preset doubles it.
    result = wrapper_overhead.run(calls=10_000 if args.quick else 20_000)
    print(wrapper_overhead.format_report(result), flush=True)
    cpu = result["cpu_mock"]
    md = [
        "## Wrapper hit-path overhead\n",
        f"`bench.wrapper_overhead`: a tiny module under `AdaptiveCUDAGraphWrapper` with the "
        f"mock graph, medians of {cpu['calls_each']} calls each; the direct call does the same "
        "work as a mock replay (module + copy into the output), so the difference is the "
        "wrapper's own cost.\n",
        markdown_table(
            ["measure", "us", "target", "met"],
            [
                ["direct call (median)", cpu["direct_median_us"], None, None],
                ["wrapper hit (median)", cpu["wrapper_hit_median_us"], None, None],
                [
                    "overhead",
                    cpu["overhead_us"],
                    f"<= {cpu['target_overhead_us']:g} us",
                    cpu["meets_target"],
                ],
            ],
        ),
    ]
    gpu = result.get("cuda")
    if gpu is None:
        md.append("\nCUDA: not available on this machine, so no real-graph replay comparison.\n")
    else:
        md.append(f"\nCUDA replay on {gpu['device']} (input {gpu['shape']}, mean per call):\n")
        eager = ["eager", gpu["eager_us"], gpu["eager_us"] / gpu["raw_replay_us"], None, None]
        md.append(_replay_table(gpu, [eager]))
    lm = result.get("cuda_minilm")
    if lm is not None:
        md.append(
            f"\nCUDA replay of the {lm['model']} FULL graph {lm['descriptor']} on {lm['device']} "
            f"(launch-bound; median of {lm['iters']} calls, synchronised after each, called as "
            "the runner calls it):\n"
        )
        md.append(_replay_table(lm))
    elif "cuda_minilm_error" in result:
        md.append(f"\nCUDA MiniLM graph replay: not measured ({result['cuda_minilm_error']}).\n")
    results.write_section("overhead", "\n".join(md), result)


def _replay_table(m: dict[str, Any], extra_rows: Sequence[list[Any]] = ()) -> str:
    """Raw replay against wrapper replay (and any extra rows) of one CUDA measurement."""
    rows = [
        ["raw CUDAGraph.replay()", m["raw_replay_us"], 1.0, None, None],
        [
            "wrapper replay",
            m["wrapper_replay_us"],
            m["wrapper_vs_raw_ratio"],
            f"<= {m['target_ratio']:.2f}x raw",
            m["meets_target"],
        ],
        *extra_rows,
    ]
    return markdown_table(["measure", "us", "ratio", "target", "met"], rows)


def run_workers(args: argparse.Namespace, results: ResultsDir) -> None:
    from bench.workers import markdown, run_workers_bench

    sweep = [int(x) for x in args.sweep.split(",")]
    requests = args.requests or (1000 if args.quick else 3000)
    rows = run_workers_bench(sweep, model=args.model, clients=args.clients, requests=requests)
    results.write_section("workers", markdown(rows, args.model, args.clients), {"rows": rows})


RUNNERS: dict[str, Callable[[argparse.Namespace, ResultsDir], None]] = {
    "engine": run_engine,
    "service": run_service,
    "adaptive": run_adaptive,
    "overhead": run_overhead,
    "rerank": run_rerank,  # on its own: not part of `all`
    "workers": run_workers,  # on its own: not part of `all`
}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> int:
    args = build_parser(prog).parse_args(argv)
    # A time limit (gpu_check's `timeout`) ends a run with SIGTERM: leave through the `with`
    # blocks, so the servers and runner processes it started stop too instead of living on.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if "torch" not in sys.modules:
        # Read by OpenMP when torch loads. Spin-waiting threads collapse throughput ~10x on a
        # small shared CPU as soon as any other process wants a core (measured on 2 cores), so
        # the benchmarks wait passively unless the caller chose otherwise (results.md says which).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    results = ResultsDir(args.out)
    names = list(SUBCOMMANDS) if args.command == "all" else [args.command]
    failed: list[str] = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== bench {name}{' (quick)' if args.quick else ''} ==", flush=True)
        try:
            RUNNERS[name](args, results)
        except Exception:
            # `all` goes on with the next benchmark; the exit status still says it failed.
            traceback.print_exc()
            failed.append(name)
            if len(names) == 1:
                return 1
        print(f"== {name}: {time.perf_counter() - t0:.1f} s ==", flush=True)
    print(f"results: {results.markdown_path}", flush=True)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
