"""Rerank benchmark: the sidecar's POST /rerank against a FastAPI server calling
`CrossEncoder.predict` per request, same model, over real HTTP on loopback.

Method (also in docs/benchmarks.md):
- The model: an ms-marco-MiniLM-L-6-v2-shaped cross-encoder built once per results folder
  (`bench.rerank_model`: the bundled MiniLM body, a seeded random head), or `--model DIR`.
- Two servers, each a real process on a free loopback port, started one at a time (never both
  serving while one is measured): the sidecar (`python -m app serve`, SIDECAR_MODEL_PATH = the
  reranker, the service benchmark's settings otherwise: graph mode auto, i.e. NONE on a CPU) and
  the CrossEncoder baseline (`bench.baselines.ce_server`, float32 as users first write it). Both
  get the same torch thread count and the service benchmark's environment (OMP_WAIT_POLICY).
- Load (`bench.loadgen --load rerank`, its own process): 8 clients in a closed loop, each request
  one query against 20 to 100 documents of mixed length from a fixed-seed list, the same
  requests to both servers; warm-up requests first on the same connections, uncounted. Every
  answer is checked (one index and score per document). Throughput is pairs (documents scored)
  per second over the run's wall time.
- Rounds: each server is started and measured once per round, the order reversed every other
  round, and the rounds are pooled, so drift in the machine's speed hits both alike.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import RERANK_DOCS, LoadResult, make_rerank_requests, pool
from bench.report import ResultsDir, markdown_table
from bench.service import (
    QUICK,
    SIDECAR,
    ServiceOptions,
    free_port,
    resolve_device_dtype,
    run_loadgen,
    server_env,
    sidecar_settings,
)
from tests.server_process import ServerProcess

CE = "CrossEncoder.predict"
TARGET_RATIO = 2.0  # issue 16: the sidecar at least 2x the CrossEncoder server, no errors


@dataclass(frozen=True)
class RerankPreset:
    requests: int  # measured requests per server and round
    warmup_requests: int  # per server and round, on the measuring connections, not counted
    num_requests: int  # size of the fixed-seed request list both servers receive
    rounds: int
    concurrency: int = 8


RERANK_QUICK = RerankPreset(requests=16, warmup_requests=8, num_requests=64, rounds=1)
RERANK_FULL = RerankPreset(requests=32, warmup_requests=8, num_requests=128, rounds=2)


@dataclass
class RerankOptions:
    preset: RerankPreset
    model: str | None = None  # a cross-encoder directory; None: build the MiniLM-sized reranker
    threads: int = 2
    device: str = "auto"
    dtype: str = "auto"  # the sidecar's (auto: as the sidecar resolves it)
    ce_dtype: str = "float32"  # the baseline's: float32, as users first run it
    servers: tuple[str, ...] = (SIDECAR, CE)
    sidecar_env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 180.0
    request_timeout_s: float = 600.0
    seed: int = 0


def _service_options(opts: RerankOptions, model: str) -> ServiceOptions:
    return ServiceOptions(
        preset=QUICK,  # unused: only the server settings are taken from it
        threads=opts.threads,
        model=model,
        device=opts.device,
        dtype=opts.dtype,
        sidecar_env=dict(opts.sidecar_env),
    )


def server_command(
    name: str, opts: RerankOptions, model: str, port: int
) -> tuple[list[str], dict[str, str]]:
    """(command, settings logged in the results) of one server."""
    py = sys.executable
    device, _ = resolve_device_dtype(opts.device, opts.dtype)
    if name == SIDECAR:
        settings = sidecar_settings(_service_options(opts, model), "***")
        return [py, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)], settings
    if name == CE:
        cmd = [py, "-m", "bench.baselines.ce_server", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--threads", str(opts.threads), "--device", device, "--dtype", opts.ce_dtype]
        cmd += ["--model-dir", model]
        settings = {"route": "def (threadpool)", "device": device, "dtype": opts.ce_dtype}
        return cmd, settings
    raise ValueError(f"unknown server {name!r}")


def measure_once(
    name: str, opts: RerankOptions, model: str, requests_file: Path, log_path: Path
) -> tuple[float, dict[str, Any]]:
    """Start `name`, run the warm-up and the measured load on the same connections, stop it;
    (seconds to ready, the LoadResult as a dict)."""
    port = free_port()
    cmd, _ = server_command(name, opts, model, port)
    sopts = _service_options(opts, model)
    env = {**os.environ, **server_env(sopts)}
    if name == SIDECAR:
        env.update(sidecar_settings(sopts, secrets.token_hex(16)))
    base = f"http://127.0.0.1:{port}"
    server = ServerProcess(cmd, env, log_path, ready_url=base + "/readyz")
    try:
        ready = server.wait_ready(opts.ready_timeout_s)
        result = run_loadgen(
            base + "/rerank",
            requests_file,
            opts.preset.concurrency,
            opts.preset.requests,
            warmup=opts.preset.warmup_requests,
            load="rerank",
            timeout_s=opts.request_timeout_s,
        )
    finally:
        server.stop()
    return ready, result


def _as_load_result(data: dict[str, Any]) -> LoadResult:
    return LoadResult(**{k: v for k, v in data.items() if k in LoadResult.__dataclass_fields__})


def run_rerank_bench(opts: RerankOptions, results: ResultsDir) -> dict[str, Any]:
    preset = opts.preset
    model = opts.model
    if model is None:
        from bench.rerank_model import build_minilm_reranker

        model = str(build_minilm_reranker(results.path / "cache", seed=opts.seed))
    requests = make_rerank_requests(preset.num_requests, seed=opts.seed)
    log_dir = results.path / "logs"
    log_dir.mkdir(exist_ok=True)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in opts.servers}
    ready: dict[str, list[float]] = {name: [] for name in opts.servers}
    with tempfile.TemporaryDirectory() as tmp:
        requests_file = Path(tmp) / "rerank.json"
        requests_file.write_text(json.dumps(requests))
        for k in range(preset.rounds):
            order = opts.servers if k % 2 == 0 else tuple(reversed(opts.servers))
            for name in order:
                tag = name.replace(" ", "_").replace(".", "_")
                log_path = log_dir / f"rerank-{tag}-round{k + 1}.log"
                seconds, result = measure_once(name, opts, model, requests_file, log_path)
                ready[name].append(seconds)
                rounds[name].append(result)
                print(
                    f"  rerank round {k + 1} {name:>20}: {result['items_per_s']:8.1f} pairs/s "
                    f"{result['throughput_rps']:6.2f} req/s  p50 {result['p50_ms']:8.1f} ms  "
                    f"p99 {result['p99_ms']:8.1f} ms  errors {result['errors']}",
                    flush=True,
                )
    data = summarise_rerank(opts, model, requests, rounds, ready)
    write_rerank_section(results, data)
    side, ce = data["servers"].get(SIDECAR), data["servers"].get(CE)
    for name, s in data["servers"].items():
        print(
            f"rerank {name}: {s['pairs_per_s']:.1f} pairs/s, p50 {s['p50_ms']:.1f} ms, "
            f"p99 {s['p99_ms']:.1f} ms, errors {s['errors']}",
            flush=True,
        )
    if side and ce:
        print(f"rerank: sidecar / CrossEncoder = {data['ratio']:.2f}x", flush=True)
    return data


def summarise_rerank(
    opts: RerankOptions,
    model: str,
    requests: list[dict[str, Any]],
    rounds: dict[str, list[dict[str, Any]]],
    ready: dict[str, list[float]],
) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for name, runs in rounds.items():
        pooled = pool([_as_load_result(r) for r in runs]).to_dict()
        del pooled["latencies_ms"]
        _, settings = server_command(name, opts, model, 0)
        servers[name] = {
            "settings": {k: ("***" if "TOKEN" in k else v) for k, v in settings.items()},
            "ready_seconds": statistics.median(ready[name]),
            "pairs_per_s": pooled["items_per_s"],
            "requests_per_s": pooled["throughput_rps"],
            "round_pairs_per_s": [r["items_per_s"] for r in runs],
            **{k: pooled[k] for k in ("requests", "ok", "errors", "items", "p50_ms", "p99_ms")},
            "error_samples": pooled["error_samples"],
        }
    ratio = None
    if SIDECAR in servers and CE in servers and servers[CE]["pairs_per_s"] > 0:
        ratio = servers[SIDECAR]["pairs_per_s"] / servers[CE]["pairs_per_s"]
    errors = sum(s["errors"] for s in servers.values())
    docs = [len(r["texts"]) for r in requests]
    device, dtype = resolve_device_dtype(opts.device, opts.dtype)
    return {
        "preset": asdict(opts.preset),
        "model": model,
        "threads": opts.threads,
        "device": device,
        "sidecar_dtype": dtype,
        "ce_dtype": opts.ce_dtype,
        "server_env": server_env(_service_options(opts, model)),
        "order": list(opts.servers),
        "documents_per_request": {
            "min": min(docs),
            "max": max(docs),
            "mean": sum(docs) / len(docs),
        },
        "servers": servers,
        "ratio": ratio,
        "errors": errors,
        "target": {
            "target": f"sidecar >= {TARGET_RATIO:g}x {CE} pairs/s, 0 errors",
            "value": ratio,
            "met": None if ratio is None else bool(ratio >= TARGET_RATIO and errors == 0),
        },
    }


def write_rerank_section(results: ResultsDir, data: dict[str, Any]) -> None:
    preset = data["preset"]
    docs = data["documents_per_request"]
    md = ["## Rerank: sidecar against CrossEncoder.predict over HTTP\n"]
    md.append(
        f"Each server alone on the machine, on {data['device']} (sidecar in "
        f"{data['sidecar_dtype']}, the CrossEncoder server in {data['ce_dtype']} as users first "
        f"run it), torch intra-op threads = {data['threads']} in both (environment: "
        f"{', '.join(f'`{k}={v}`' for k, v in data['server_env'].items())}). "
        f"{preset['concurrency']} clients, each request one query against "
        f"{RERANK_DOCS[0]} to {RERANK_DOCS[1]} documents of mixed length (this list: "
        f"{docs['min']} to {docs['max']}, mean {docs['mean']:.1f}), POST /rerank, "
        f"{preset['requests']} requests per server and round after {preset['warmup_requests']} "
        f"warm-up requests; {preset['rounds']} round(s), order {', '.join(data['order'])} "
        "(reversed every other round), rounds pooled. Model: "
        f"`{Path(data['model']).name}`.\n"
    )
    rows = [
        [
            name,
            s["pairs_per_s"],
            s["requests_per_s"],
            s["p50_ms"],
            s["p99_ms"],
            s["errors"],
            ", ".join(f"{x:.1f}" for x in s["round_pairs_per_s"]),
        ]
        for name, s in data["servers"].items()
    ]
    md.append(
        markdown_table(
            ["server", "pairs/s", "req/s", "p50 ms", "p99 ms", "errors", "pairs/s per round"],
            rows,
            digits=1,
        )
    )
    t = data["target"]
    md.append("\nTarget (issue 16):\n")
    md.append(markdown_table(["target", "measured", "met"], [[t["target"], t["value"], t["met"]]]))
    results.write_section("rerank", "\n".join(md), data)
