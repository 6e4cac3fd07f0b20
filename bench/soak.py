"""Soak: minutes of mixed-shape load against a real `python -m app serve` process.

    python -m bench.soak --seconds 300            # the long form (MiniLM, ~5 min)
    python -m bench.soak --seconds 40 --model toy # what the CI test runs

The server runs in its own process (started here, port chosen by the OS, stopped with SIGTERM at
the end so its drain is part of the run). Closed-loop clients send requests of 1 to
`max_inputs` texts of 3 to ~200 words to /infer and /v1/embeddings, so batches of every size and
sequence bucket form and the graph cache captures and evicts all the time (a small
`max_cached_graphs` makes sure it must). Meanwhile a sampler reads /admin/stats and the server's
VmRSS from /proc/<pid>/status every `sample_s` seconds.

Every answer is checked: 200, one L2-normalised finite row per text, and each text's embedding
equal (within `tolerance`) to the first one seen for it, which catches a graph output that is
overwritten before it is copied out. The run passes when there were zero errors, the cache never
held more than max_cached_graphs, the server exited 0 on SIGTERM, and resident memory after
warm-up grew by less than `max_rss_growth` (the mean of the last samples against the mean of the
first samples after warm-up, so one transient batch buffer does not decide it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import secrets
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import make_texts
from tests.server_process import SidecarProcess


def clean_exit(code: int | None, log: str) -> bool:
    """A graceful stop: exit 0 after the lifespan's shutdown (queue drained, profile saved)."""
    return code == 0 and "Application shutdown complete" in log


# --------------------------------------------------------------------------- the soak
@dataclass
class SoakConfig:
    seconds: float = 300.0
    warmup_s: float | None = None  # None: 20% of the run, at most 30 s
    concurrency: int = 8
    model: str = "default"  # SIDECAR_MODEL_PATH: "default" (MiniLM), "toy" or a directory
    graph_mode: str = "FULL"
    max_cached_graphs: int = 6
    max_inputs: int = 16  # texts per request: 1 .. max_inputs
    max_batch_size: int = 32
    text_pool: int = 400
    sample_s: float = 1.0
    tolerance: float = 1e-4  # max |difference| between two answers for the same text
    max_rss_growth: float = 0.10
    seed: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    def warmup_seconds(self) -> float:
        if self.warmup_s is not None:
            return self.warmup_s
        return min(30.0, 0.2 * self.seconds)


@dataclass
class SoakResult:
    config: dict[str, Any]
    requests: int = 0
    texts: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    routes: dict[str, int] = field(default_factory=dict)
    wall_seconds: float = 0.0
    throughput_rps: float = 0.0
    ready_seconds: float = 0.0
    samples: int = 0
    max_cached_graphs_seen: int = 0
    max_cached_graphs_limit: int = 0
    cache_limit_violations: int = 0
    rss_start_mb: float = 0.0  # right after start-up (model loaded)
    rss_baseline_mb: float = 0.0  # first samples after warm-up
    rss_final_mb: float = 0.0  # last samples of the run
    rss_max_mb: float = 0.0  # highest sample after warm-up
    rss_growth: float = 0.0  # (final - baseline) / baseline
    rss_max_growth: float = 0.0  # (max - baseline) / baseline
    rss_series_mb: list[tuple[float, float]] = field(default_factory=list)  # (t, MB)
    final_stats: dict[str, Any] = field(default_factory=dict)
    queue_depth_after: float = -1.0
    exit_code: int | None = None
    shutdown_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def _check_rows(rows: Any, n: int, dims: int | None) -> str | None:
    if not isinstance(rows, list) or len(rows) != n:
        return "wrong_count"
    for row in rows:
        if not isinstance(row, list) or not row or (dims is not None and len(row) != dims):
            return "wrong_dims"
        if not all(isinstance(x, float | int) and math.isfinite(x) for x in row):
            return "not_finite"
        norm = math.sqrt(sum(x * x for x in row))
        if abs(norm - 1.0) > 1e-3:
            return "not_normalised"
    return None


class _Load:
    """Closed-loop clients plus the consistency check shared between them."""

    def __init__(self, cfg: SoakConfig, url: str, result: SoakResult) -> None:
        self.cfg = cfg
        self.url = url
        self.result = result
        self.pool = make_texts(cfg.text_pool, seed=cfg.seed)
        self.first_seen: dict[int, list[float]] = {}  # text index -> its first embedding
        self.dims: int | None = None
        self.errors: Counter[str] = Counter()
        self.routes: Counter[str] = Counter()

    def _error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.result.error_samples) < 10:
            self.result.error_samples.append(f"{kind}: {detail[:300]}")

    def _pick(self, rng: random.Random) -> list[int]:
        # Mostly small requests, some large ones: every batch size of the ladder shows up.
        roll = rng.random()
        hi = self.cfg.max_inputs
        if roll < 0.4:
            k = 1
        elif roll < 0.7:
            k = rng.randint(2, min(4, hi))
        elif roll < 0.9:
            k = rng.randint(min(5, hi), min(12, hi))
        else:
            k = rng.randint(max(1, hi // 2), hi)
        return [rng.randrange(len(self.pool)) for _ in range(k)]

    async def client(self, http: httpx.AsyncClient, stop_at: float, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            picks = self._pick(rng)
            texts = [self.pool[i] for i in picks]
            openai = rng.random() < 0.3
            route = "/v1/embeddings" if openai else "/infer"
            body: dict[str, Any] = {"input": texts} if openai else {"inputs": texts}
            if openai and len(texts) == 1 and rng.random() < 0.5:
                body["input"] = texts[0]  # the OpenAI single-string form
            self.routes[route] += 1
            self.result.requests += 1
            self.result.texts += len(texts)
            try:
                resp = await http.post(route, json=body)
            except httpx.HTTPError as exc:
                self._error(type(exc).__name__, repr(exc))
                continue
            if resp.status_code != 200:
                self._error(f"http_{resp.status_code}", resp.text)
                continue
            try:
                data = resp.json()
                rows = (
                    [item["embedding"] for item in data["data"]] if openai else data["embeddings"]
                )
            except (ValueError, KeyError, TypeError) as exc:
                self._error("bad_body", f"{exc!r}: {resp.text}")
                continue
            problem = _check_rows(rows, len(texts), self.dims)
            if problem is not None:
                self._error(problem, resp.text)
                continue
            if self.dims is None:
                self.dims = len(rows[0])
            for i, row in zip(picks, rows, strict=True):
                ref = self.first_seen.setdefault(i, row)
                diff = max(abs(a - b) for a, b in zip(ref, row, strict=True))
                if diff > self.cfg.tolerance:
                    self._error("inconsistent", f"text {i}: max |diff| {diff:.3g}")
                    break


async def _sampler(
    cfg: SoakConfig,
    server: SidecarProcess,
    http: httpx.AsyncClient,
    token: str,
    result: SoakResult,
    t0: float,
    stop_at: float,
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < stop_at:
        t = time.monotonic() - t0
        result.rss_series_mb.append((round(t, 2), server.rss_bytes() / 2**20))
        try:
            stats = (await http.get("/admin/stats", headers=headers)).json()
            cached = int(stats["cached_graphs"])
            result.samples += 1
            result.max_cached_graphs_seen = max(result.max_cached_graphs_seen, cached)
            if cached > cfg.max_cached_graphs:
                result.cache_limit_violations += 1
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            result.failures.append(f"/admin/stats sample failed: {exc!r}")
        await asyncio.sleep(cfg.sample_s)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _summarise_rss(cfg: SoakConfig, result: SoakResult) -> None:
    warm = cfg.warmup_seconds()
    after = [mb for t, mb in result.rss_series_mb if t >= warm]
    if len(after) < 2:
        result.failures.append("too few RSS samples after warm-up (run longer than the warm-up)")
        return
    k = max(1, min(5, len(after) // 4))
    result.rss_baseline_mb = _mean(after[:k])
    result.rss_final_mb = _mean(after[-k:])
    result.rss_max_mb = max(after)
    result.rss_growth = (result.rss_final_mb - result.rss_baseline_mb) / result.rss_baseline_mb
    result.rss_max_growth = (result.rss_max_mb - result.rss_baseline_mb) / result.rss_baseline_mb
    if result.rss_growth >= cfg.max_rss_growth:
        result.failures.append(
            f"resident memory grew {100 * result.rss_growth:.1f}% after warm-up "
            f"({result.rss_baseline_mb:.1f} -> {result.rss_final_mb:.1f} MB), limit "
            f"{100 * cfg.max_rss_growth:.0f}%"
        )


def server_env(cfg: SoakConfig, token: str) -> dict[str, str]:
    env = {
        "SIDECAR_MODEL_PATH": cfg.model,
        "SIDECAR_GRAPH_MODE": cfg.graph_mode,
        "SIDECAR_MAX_CACHED_GRAPHS": str(cfg.max_cached_graphs),
        "SIDECAR_CAPTURE_THRESHOLD": "1",  # capture on the first miss: the cache churns
        "SIDECAR_MIN_REPLAYS_TO_KEEP": "0",
        "SIDECAR_MAX_BATCH_SIZE": str(cfg.max_batch_size),
        "SIDECAR_MAX_INPUTS_PER_REQUEST": str(max(cfg.max_inputs, 1)),
        "SIDECAR_ADMIN_TOKEN": token,
        "SIDECAR_LOG_LEVEL": "info",
    }
    env.update(cfg.extra_env)
    return env


async def _drive(cfg: SoakConfig, server: SidecarProcess, token: str, result: SoakResult) -> None:
    load = _Load(cfg, server.url, result)
    limits = httpx.Limits(max_connections=cfg.concurrency + 2)
    timeout = httpx.Timeout(60.0)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as http:
        t0 = time.monotonic()
        stop_at = t0 + cfg.seconds
        tasks = [
            asyncio.create_task(load.client(http, stop_at, cfg.seed * 1000 + i))
            for i in range(cfg.concurrency)
        ]
        tasks.append(asyncio.create_task(_sampler(cfg, server, http, token, result, t0, stop_at)))
        await asyncio.gather(*tasks)
        result.wall_seconds = time.monotonic() - t0
        headers = {"Authorization": f"Bearer {token}"}
        result.final_stats = (await http.get("/admin/stats", headers=headers)).json()
        result.queue_depth_after = float(result.final_stats.get("queue_depth", -1))
    result.errors = sum(load.errors.values())
    result.error_kinds = dict(load.errors)
    result.routes = dict(load.routes)
    result.throughput_rps = result.requests / result.wall_seconds if result.wall_seconds else 0.0


def run_soak(cfg: SoakConfig, log_path: Path | None = None) -> SoakResult:
    """Start a server, load it for cfg.seconds, stop it with SIGTERM; the measured result."""
    token = secrets.token_urlsafe(24)
    result = SoakResult(config=asdict(cfg), max_cached_graphs_limit=cfg.max_cached_graphs)
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="sidecar-soak-")) / "server.log"
    server = SidecarProcess(server_env(cfg, token), log_path)
    try:
        result.ready_seconds = server.wait_ready()
        result.rss_start_mb = server.rss_bytes() / 2**20
        asyncio.run(_drive(cfg, server, token, result))
    finally:
        t_stop = time.monotonic()
        result.exit_code = server.stop()
        result.shutdown_seconds = time.monotonic() - t_stop
    _summarise_rss(cfg, result)
    if result.errors:
        result.failures.append(f"{result.errors} errors: {result.error_kinds}")
    if result.cache_limit_violations:
        result.failures.append(
            f"the cache held {result.max_cached_graphs_seen} graphs, more than "
            f"max_cached_graphs={cfg.max_cached_graphs}, in {result.cache_limit_violations} samples"
        )
    if result.queue_depth_after != 0:
        result.failures.append(f"queue depth {result.queue_depth_after} after the load ended")
    if not clean_exit(result.exit_code, server.log_text()):
        result.failures.append(
            f"the server did not shut down cleanly on SIGTERM (exit {result.exit_code})"
        )
    if result.requests == 0:
        result.failures.append("no request was sent")
    return result


def describe(result: SoakResult) -> str:
    """A few human lines for the terminal and docs/reliability.md."""
    fs = result.final_stats
    lines = [
        f"soak {result.config['seconds']:.0f} s, model {result.config['model']}, "
        f"{result.config['concurrency']} clients: {result.requests} requests "
        f"({result.texts} texts, {result.throughput_rps:.1f} req/s), {result.errors} errors",
        f"graph cache: max {result.max_cached_graphs_seen} cached "
        f"(limit {result.max_cached_graphs_limit}) over {result.samples} samples; "
        f"captures {fs.get('captures')}, evictions {fs.get('evictions')}, "
        f"hit rate {fs.get('hit_rate', 0.0):.3f}, capture failures {fs.get('capture_failures')}",
        f"RSS: {result.rss_start_mb:.1f} MB at start, {result.rss_baseline_mb:.1f} MB after "
        f"warm-up, {result.rss_final_mb:.1f} MB at the end ({100 * result.rss_growth:+.2f}%), "
        f"max {result.rss_max_mb:.1f} MB ({100 * result.rss_max_growth:+.2f}%)",
        f"shutdown: exit {result.exit_code} in {result.shutdown_seconds:.2f} s after SIGTERM",
        "PASS" if result.passed else "FAIL: " + "; ".join(result.failures),
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = SoakConfig()
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak a real sidecar process with mixed-shape load; exit 1 on any error, "
        "a cache over its limit or resident memory growth over the limit after warm-up.",
    )
    p.add_argument("--seconds", type=float, default=d.seconds, help="load duration (%(default)s)")
    p.add_argument("--warmup", type=float, default=None, help="seconds (20%% of run, max 30)")
    p.add_argument("--concurrency", type=int, default=d.concurrency)
    p.add_argument("--model", default=d.model, help="default (MiniLM), toy, or a model directory")
    p.add_argument("--graph-mode", default=d.graph_mode, choices=["NONE", "PIECEWISE", "FULL"])
    p.add_argument("--max-cached-graphs", type=int, default=d.max_cached_graphs)
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="texts per request, max")
    p.add_argument("--sample", type=float, default=d.sample_s, help="sampling period, seconds")
    p.add_argument("--max-rss-growth", type=float, default=d.max_rss_growth)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", type=Path, help="write the full result (with the RSS series) here")
    p.add_argument("--log", type=Path, help="server log file (default: a temp file)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = SoakConfig(
        seconds=args.seconds,
        warmup_s=args.warmup,
        concurrency=args.concurrency,
        model=args.model,
        graph_mode=args.graph_mode,
        max_cached_graphs=args.max_cached_graphs,
        max_inputs=args.max_inputs,
        sample_s=args.sample,
        max_rss_growth=args.max_rss_growth,
        seed=args.seed,
    )
    result = run_soak(cfg, args.log)
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(describe(result))
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
