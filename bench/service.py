"""Service benchmark: the sidecar against two baseline servers, over real HTTP on loopback.

Method (also in docs/benchmarks.md):
- Three servers, each a real process on a free loopback port, started one at a time (never two
  serving while one is measured: the CPU is shared): the sidecar (`python -m app serve`), the
  naive same-model baseline and the sentence-transformers baseline (`bench.baselines`).
  Every server is pinned to the same torch intra-op thread count.
- The load generator (`bench.loadgen`) runs in its own process per measurement, so it never
  shares a GIL with a server. Each server is warmed up first (one run at the largest concurrency
  level, so the sidecar has seen and captured its hot shapes), then every concurrency level is
  measured with the same fixed-seed list of texts and the same number of requests.
- Saturation: after the sidecar's levels, with the sidecar still up, the raw runner
  (`bench.raw_runner`: model work only, no HTTP, no tokenizer, on exactly the texts a
  saturation run sends, in batches of `max_batch_size`) runs in its own process with the servers'
  environment, and a few pairs alternate a load run at the largest concurrency level (on
  connections the same load generator has just warmed) with one raw pass, seconds apart. The
  saturated fraction is the median of the pairs' ratios: this shared machine's speed moves by
  tens of % within a minute, so only measurements seconds apart compare.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import LoadResult, load_processes, make_texts, merge_concurrent, pool
from bench.plots import plot_service
from bench.raw_runner import RawRunnerProcess
from bench.report import ResultsDir, fmt, markdown_table
from tests.server_process import ROOT, ServerProcess

SIDECAR = "sidecar"
NAIVE = "naive same-model"
ST = "sentence-transformers"


@dataclass(frozen=True)
class ServicePreset:
    concurrencies: tuple[int, ...]
    requests: int  # measured requests per (server, concurrency level)
    warmup_requests: int  # per server, at the largest level, before any measurement
    level_warmup: int  # per level, on the measuring client's connections (not counted)
    num_texts: int  # size of the fixed-seed text list every server receives
    # Per round: (sidecar load run at the largest level, raw runner pass) pairs, order alternating,
    # each side on the first `saturation_requests` texts: longer than a level, since a short
    # window on this shared machine swings by 20 % either way (pairs of 320 requests at 128
    # clients measured 83 to 105 %, of 960 requests 81 to 88 %).
    saturation_pairs: int
    saturation_requests: int
    # Rounds: every server is started and measured once per round (order reversed every other
    # round) and the rounds are pooled, so drift in the machine's load hits all servers alike.
    rounds: int = 1


QUICK = ServicePreset(
    concurrencies=(1, 32),
    requests=96,
    warmup_requests=64,
    level_warmup=32,
    num_texts=256,
    saturation_pairs=2,
    saturation_requests=192,
)
FULL = ServicePreset(
    concurrencies=(1, 8, 32, 128),
    requests=320,
    warmup_requests=256,
    level_warmup=64,
    num_texts=1024,
    saturation_pairs=3,
    saturation_requests=960,
    rounds=2,
)


@dataclass
class ServiceOptions:
    preset: ServicePreset
    threads: int = 2
    max_batch_size: int = 32
    graph_mode: str = "auto"  # as the sidecar's: FULL on CUDA, NONE on a CPU
    servers: tuple[str, ...] = (SIDECAR, NAIVE, ST)
    sidecar_env: dict[str, str] = field(default_factory=dict)
    ready_timeout_s: float = 180.0
    seed: int = 0
    model: str | None = None  # None: the shipped MiniLM; "toy": the tiny test model (no ST)
    omp_passive: bool = True  # OMP_WAIT_POLICY=PASSIVE in every server (see server_env)
    transport: str = "raw"  # the load generator's HTTP client (see loadgen.RawHTTPConnection)
    # The sidecar, the naive server and the raw runner compute on the same device in the same
    # dtype, so those ratios compare serving, not arithmetic. "auto" resolves as the sidecar's
    # own settings do.
    device: str = "auto"  # auto: cuda where available, else cpu
    dtype: str = "auto"  # auto as the sidecar: float16 on cuda; bfloat16/float32 on cpu
    # The one exception: the sentence-transformers server runs as users first write it,
    # `SentenceTransformer(path).encode(texts)`, which computes in float32 (issue 6 defines that
    # baseline as "the server most users write first"). "same" casts it to every server's dtype
    # instead, which isolates serving from arithmetic (no user writes that cast first).
    st_dtype: str = "float32"


def st_dtype_name(opts: ServiceOptions, dtype: str) -> str:
    """The sentence-transformers server's dtype: opts.st_dtype, or `dtype` (every server's)."""
    return dtype if opts.st_dtype == "same" else opts.st_dtype


def resolve_device_dtype(device: str, dtype: str) -> tuple[str, str]:
    """(device, dtype name) for every server, by the sidecar's own rules (app.devices), so the
    sidecar's SIDECAR_DEVICE=auto / SIDECAR_DTYPE=auto and this benchmark cannot disagree."""
    from app.devices import resolve_device, resolve_dtype

    dev = resolve_device(device)
    return dev, str(resolve_dtype(dtype, dev)).removeprefix("torch.")


@dataclass
class ServerRun:
    """One server across the rounds: per round, its start-up time and per-level results."""

    name: str
    command: list[str]
    settings: dict[str, str]
    ready_seconds: list[float] = field(default_factory=list)
    rounds: list[dict[int, dict[str, Any]]] = field(default_factory=list)
    levels: dict[int, dict[str, Any]] = field(default_factory=dict)  # pooled over rounds
    # The sidecar only: the raw runner's description and the saturation pairs of every round.
    raw_info: dict[str, Any] = field(default_factory=dict)
    saturation: list[dict[str, Any]] = field(default_factory=list)

    def pool_rounds(self) -> None:
        for level in self.rounds[0]:
            runs = [r[level] for r in self.rounds]
            pooled = pool([_as_load_result(r) for r in runs]).to_dict()
            del pooled["latencies_ms"]
            pooled["round_throughputs"] = [r["throughput_rps"] for r in runs]
            if "sidecar" in runs[0]:
                pooled["sidecar"] = _sidecar_means(
                    {k: sum(r["sidecar"].get(k, 0.0) for r in runs) for k in runs[0]["sidecar"]}
                )
            self.levels[level] = pooled


def _as_load_result(data: dict[str, Any]) -> LoadResult:
    fields = {k: v for k, v in data.items() if k in LoadResult.__dataclass_fields__}
    return LoadResult(**fields)


def _sidecar_means(delta: dict[str, float]) -> dict[str, float]:
    """Mean batch size and padding ratio from counter deltas over a measurement."""
    out = dict(delta)
    out.pop("mean_batch_size", None)
    out.pop("mean_padding_ratio", None)
    if out.get("batches", 0.0) > 0:
        out["mean_batch_size"] = out["texts"] / out["batches"]
    if out.get("sidecar_padding_ratio_count", 0.0) > 0:
        out["mean_padding_ratio"] = (
            out["sidecar_padding_ratio_sum"] / out["sidecar_padding_ratio_count"]
        )
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(opts: ServiceOptions) -> dict[str, str]:
    """Environment shared by all three servers. OMP_WAIT_POLICY=PASSIVE: with more than one
    intra-op thread, OpenMP threads that spin-wait at barriers collapse throughput as soon as
    another process (the load generator, the event loop) needs one of the few cores; measured
    ~10x slower on a shared 2-core machine. Passive waiting avoids that for every server alike."""
    env = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if opts.omp_passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def sidecar_settings(opts: ServiceOptions, admin_token: str) -> dict[str, str]:
    """The sidecar's settings for this run (logged in the results). Batch wait 0 ms: batches
    form from whatever queued while the worker was busy (Triton's default).

    With real graphs (CUDA, a graph mode) the whole ladder is captured at start-up, so the
    measured runs replay graphs as a sidecar in steady state does: at GPU rates a level's
    requests pass in a fraction of a second, and in an H200 run 3 adaptive captures (tens of
    ms each, serial with the batches) landed inside the 0.5 s window of the 32-client level.
    The adaptive policy has its own benchmark (`bench adaptive`); start-up
    time is reported per server either way. `--sidecar-env SIDECAR_PREWARM_LADDER=false`
    measures the adaptive start instead."""
    from app.devices import resolve_graph_mode

    device, dtype = resolve_device_dtype(opts.device, opts.dtype)
    env = {
        "SIDECAR_GRAPH_MODE": resolve_graph_mode(opts.graph_mode, device),
        "SIDECAR_NUM_THREADS": str(opts.threads),
        "SIDECAR_MAX_BATCH_SIZE": str(opts.max_batch_size),
        "SIDECAR_MAX_BATCH_WAIT_MS": "0",
        "SIDECAR_LOG_LEVEL": "warning",
        "SIDECAR_ADMIN_TOKEN": admin_token,
    }
    env["SIDECAR_DEVICE"], env["SIDECAR_DTYPE"] = device, dtype
    if opts.model is not None:
        env["SIDECAR_MODEL_PATH"] = opts.model
    if env["SIDECAR_DEVICE"].startswith("cuda") and env["SIDECAR_GRAPH_MODE"] != "NONE":
        env["SIDECAR_PREWARM_LADDER"] = "true"
    env.update(opts.sidecar_env)
    return env


def server_commands(opts: ServiceOptions, port: int, admin_token: str) -> dict[str, ServerRun]:
    py = sys.executable
    device, dtype = resolve_device_dtype(opts.device, opts.dtype)
    st_dtype = st_dtype_name(opts, dtype)
    common = ["--host", "127.0.0.1", "--port", str(port), "--threads", str(opts.threads)]
    common += ["--device", device]
    model = [] if opts.model is None else ["--model-dir", opts.model]
    return {
        SIDECAR: ServerRun(
            SIDECAR,
            [py, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
            {k: ("***" if "TOKEN" in k else v) for k, v in sidecar_settings(opts, "x").items()},
        ),
        NAIVE: ServerRun(
            NAIVE,
            [py, "-m", "bench.baselines.naive", *common, "--dtype", dtype, *model],
            {
                "route": "def (threadpool)",
                "threads": str(opts.threads),
                "device": device,
                "dtype": dtype,
            },
        ),
        ST: ServerRun(
            ST,
            [py, "-m", "bench.baselines.st_server", *common, "--dtype", st_dtype, *model],
            {
                "route": "def (threadpool)",
                "threads": str(opts.threads),
                "device": device,
                "dtype": st_dtype,
                "HF_HUB_OFFLINE": "1",
            },
        ),
    }


def run_loadgen(
    url: str,
    texts_file: Path,
    concurrency: int,
    requests: int,
    *,
    transport: str = "raw",
    start_index: int = 0,
    warmup: int = 0,
    load: str = "infer",
    timeout_s: float = 60.0,
    processes: int | None = None,
) -> dict[str, Any]:
    """One load run, in its own processes; returns the LoadResult as a dict. `warmup` requests
    go first on the same connections, uncounted. `load`: bench.loadgen's (infer or rerank);
    `timeout_s`: per request. `processes` (default: `load_processes`) split the clients and the
    requests; they warm up, then start the measured run together, each on its own texts."""
    count = processes or load_processes(concurrency)
    count = max(1, min(count, concurrency, requests))
    commands = []
    for k in range(count):
        share = requests // count + (k < requests % count)
        clients = concurrency // count + (k < concurrency % count)
        first = start_index + k * (requests // count)
        commands.append(
            [sys.executable, "-m", "bench.loadgen", "--url", url]
            + ["--concurrency", str(clients), "--requests", str(share)]
            + ["--texts-file", str(texts_file), "--start-index", str(first)]
            + ["--transport", transport, "--warmup", str(warmup // count), "--load", load]
            + ["--timeout", str(timeout_s)]
            + (["--gate"] if count > 1 else [])
        )
    if count == 1:
        out = subprocess.run(commands[0], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed ({out.returncode}):\n{out.stderr[-2000:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result
    return _gated_load(commands)


def _gated_load(commands: list[list[str]]) -> dict[str, Any]:
    """Start every load-generator process, let each warm up and say ready, then start their
    measured runs at once; one merged result."""
    procs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    try:
        for proc in procs:
            assert proc.stderr is not None
            while (line := proc.stderr.readline()) and line.strip() != "ready":
                pass
        for proc in procs:
            assert proc.stdin is not None
            try:
                proc.stdin.write("go\n")
                proc.stdin.flush()
            except BrokenPipeError:  # it ended before its run: its exit status says why
                pass
        outputs = [proc.communicate(timeout=1800) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [
        (p.returncode, err) for p, (_, err) in zip(procs, outputs, strict=True) if p.returncode
    ]
    if failed:
        code, err = failed[0]
        raise RuntimeError(f"load generator failed ({code}):\n{err[-2000:]}")
    results = [_as_load_result(json.loads(out)) for out, _ in outputs]
    return merge_concurrent(results).to_dict()


def scrape_sidecar(base_url: str, admin_token: str) -> dict[str, float]:
    """Graph-cache counters and batch-size totals from the sidecar (empty if unavailable), so
    each level can report captures during measurement and the mean batch size."""
    found: dict[str, float] = {}
    try:
        stats = httpx.get(
            base_url + "/admin/stats",
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=5.0,
        )
        if stats.status_code == 200:
            for key in (
                "hits",
                "misses",
                "captures",
                "eager_runs",
                "capture_failures",
                "batches",
                "texts",
            ):
                value = stats.json().get(key)
                if isinstance(value, int | float):
                    found[key] = float(value)
        metrics = httpx.get(base_url + "/metrics", timeout=5.0)
        if metrics.status_code == 200:
            for name in ("sidecar_padding_ratio_sum", "sidecar_padding_ratio_count"):
                m = re.search(rf"^{name} ([0-9.eE+-]+)$", metrics.text, re.MULTILINE)
                if m:
                    found[name] = float(m.group(1))
    except (httpx.HTTPError, ValueError):
        pass
    return found


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def measure_server(
    run: ServerRun,
    opts: ServiceOptions,
    port: int,
    texts_file: Path,
    log_dir: Path,
    admin_token: str,
) -> None:
    """Start the server, warm it up, measure every level once (one round), stop it."""
    env = dict(os.environ)
    env.update(server_env(opts))
    if run.name == SIDECAR:
        env.update(sidecar_settings(opts, admin_token))
    base = f"http://127.0.0.1:{port}"
    tag = run.name.replace(" ", "_")
    log_path = log_dir / f"server-{tag}-round{len(run.rounds) + 1}.log"
    server = ServerProcess(run.command, env, log_path, ready_url=base + "/readyz")
    preset = opts.preset
    levels: dict[int, dict[str, Any]] = {}
    try:
        run.ready_seconds.append(server.wait_ready(opts.ready_timeout_s))
        if run.name == SIDECAR:  # what SIDECAR_WORKERS resolved to on this host
            run.settings["front_ends"] = str(len(server.children().get("front-end", [])) or 1)
        # Server-wide warm-up at the largest level: opens the code paths, fills the sidecar's
        # graph cache with the shapes this traffic makes (captures are not measured below).
        top = max(preset.concurrencies)
        url, half = base + "/infer", preset.num_texts // 2
        kw: dict[str, Any] = {"transport": opts.transport, "start_index": half}
        run_loadgen(url, texts_file, top, preset.warmup_requests, **kw)
        for level in preset.concurrencies:
            # Per-level warm-up (texts from the second half of the list), then the counters,
            # then the measured run (texts from the start): "captures in run" are the
            # measured run's own.
            run_loadgen(url, texts_file, level, max(preset.level_warmup, level), **kw)
            before = scrape_sidecar(base, admin_token) if run.name == SIDECAR else {}
            result = run_loadgen(url, texts_file, level, preset.requests, transport=opts.transport)
            if run.name == SIDECAR:
                result["sidecar"] = _sidecar_means(
                    _delta(scrape_sidecar(base, admin_token), before)
                )
            levels[level] = result
            print(
                f"  {run.name:>22} c={level:<4} {result['throughput_rps']:8.1f} req/s  "
                f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  "
                f"errors {result['errors']}",
                flush=True,
            )
        if run.name == SIDECAR and preset.saturation_pairs > 0:
            run.raw_info, pairs = measure_saturation(opts, url, texts_file)
            run.saturation.extend(pairs)
    finally:
        server.stop()
    run.rounds.append(levels)


def raw_runner_args(opts: ServiceOptions, texts_file: Path) -> list[str]:
    """`bench.raw_runner` arguments: the sidecar's effective mode, batch size, threads,
    device and dtype, on the texts a saturation run sends."""
    settings = sidecar_settings(opts, "")
    args = ["--mode", settings["SIDECAR_GRAPH_MODE"].upper()]
    args += ["--batch-size", settings["SIDECAR_MAX_BATCH_SIZE"], "--threads", str(opts.threads)]
    args += ["--texts-file", str(texts_file), "--count", str(opts.preset.saturation_requests)]
    args += ["--device", settings["SIDECAR_DEVICE"], "--dtype", settings["SIDECAR_DTYPE"]]
    if opts.model is not None:
        args += ["--model", opts.model]
    return args


def measure_saturation(
    opts: ServiceOptions, url: str, texts_file: Path
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """With the sidecar up (and idle between runs): the raw runner's description, and
    `saturation_pairs` pairs of (sidecar load run at the largest level, one raw runner pass), the
    order alternating so that a drift in the machine's speed does not favour either side."""
    preset = opts.preset
    top = max(preset.concurrencies)
    env = {**os.environ, **server_env(opts)}
    pairs: list[dict[str, Any]] = []

    def load_run() -> dict[str, Any]:
        # The texts from the start of the list, the ones the raw runner times, after a warm-up
        # on the same connections: a fleet of callers keeps its connections open.
        return run_loadgen(
            url, texts_file, top, preset.saturation_requests, transport=opts.transport, warmup=top
        )

    with RawRunnerProcess(raw_runner_args(opts, texts_file), env) as raw:
        for k in range(preset.saturation_pairs):
            if k % 2 == 0:
                side, raw_tps = load_run(), raw.texts_per_s()
            else:
                raw_tps = raw.texts_per_s()
                side = load_run()
            pair = {
                "sidecar_rps": side["throughput_rps"],
                "sidecar_errors": side["errors"],
                "loadgen_busy": side["client_busy"],
                "raw_texts_per_s": raw_tps,
                "fraction": side["throughput_rps"] / raw_tps,
            }
            pairs.append(pair)
            print(
                f"  saturation pair {k + 1}: sidecar {pair['sidecar_rps']:.1f} req/s at {top} "
                f"clients, raw runner {raw_tps:.1f} texts/s: {100 * pair['fraction']:.1f} %",
                flush=True,
            )
        return raw.info, pairs


def run_service_bench(opts: ServiceOptions, results: ResultsDir) -> dict[str, Any]:
    if opts.model == "toy" and ST in opts.servers:
        raise ValueError("the sentence-transformers server cannot load the toy model")
    preset = opts.preset
    texts = make_texts(preset.num_texts, seed=opts.seed)
    admin_token = secrets.token_hex(16)
    log_dir = results.path / "logs"
    log_dir.mkdir(exist_ok=True)
    runs = {name: server_commands(opts, 0, admin_token)[name] for name in opts.servers}
    with tempfile.TemporaryDirectory() as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(texts))
        for round_index in range(preset.rounds):
            print(f"service: round {round_index + 1}/{preset.rounds}", flush=True)
            order = opts.servers if round_index % 2 == 0 else tuple(reversed(opts.servers))
            for name in order:
                port = free_port()
                fresh = server_commands(opts, port, admin_token)[name]
                runs[name].command = fresh.command
                print(f"service: {name} on port {port}", flush=True)
                measure_server(runs[name], opts, port, texts_file, log_dir, admin_token)
    for run in runs.values():
        run.pool_rounds()
    data = summarise_service(opts, runs)
    write_service_section(results, data)
    return data


def summarise_raw_runner(side: ServerRun | None) -> dict[str, Any] | None:
    """The raw runner's description and its passes' figures (None without saturation pairs)."""
    if side is None or not side.saturation:
        return None
    passes = [p["raw_texts_per_s"] for p in side.saturation]
    median = statistics.median(passes)
    return {
        **side.raw_info,
        "passes": len(passes),
        "texts_per_s_median": median,
        "texts_per_s_best": max(passes),
        "ms_per_batch_median": 1000.0 * side.raw_info["texts"] / median / side.raw_info["batches"],
    }


def summarise_service(opts: ServiceOptions, runs: dict[str, ServerRun]) -> dict[str, Any]:
    levels = list(opts.preset.concurrencies)
    ratios: list[dict[str, Any]] = []
    side = runs.get(SIDECAR)
    for level in levels:
        row: dict[str, Any] = {"concurrency": level}
        for base in (NAIVE, ST):
            if side is None or base not in runs:
                continue
            a, b = side.levels[level], runs[base].levels[level]
            key = "naive" if base == NAIVE else "st"
            row[f"throughput_x_{key}"] = (
                a["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else None
            )
            row[f"p50_minus_{key}_ms"] = a["p50_ms"] - b["p50_ms"]
        ratios.append(row)
    side_pairs = side.saturation if side else []
    targets = evaluate_targets(runs, ratios, side_pairs)
    device, dtype = resolve_device_dtype(opts.device, opts.dtype)
    return {
        "preset": asdict(opts.preset),
        "threads": opts.threads,
        "device": device,
        "dtype": dtype,
        "st_dtype": st_dtype_name(opts, dtype),
        "server_env": server_env(opts),
        "transport": opts.transport,
        "max_batch_size": opts.max_batch_size,
        "order": list(opts.servers),
        "rounds": opts.preset.rounds,
        "servers": {
            name: {
                "command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(r.command)),
                "settings": r.settings,
                "ready_seconds": statistics.median(r.ready_seconds),
                "levels": {str(k): v for k, v in r.levels.items()},
            }
            for name, r in runs.items()
        },
        "ratios": ratios,
        "raw_runner": summarise_raw_runner(side),
        "saturated_concurrency": max(opts.preset.concurrencies),
        "saturated_fraction_of_raw": saturated_fraction(side_pairs),
        "saturation_pairs": side_pairs,
        "targets": targets,
    }


def saturated_fraction(pairs: list[dict[str, Any]]) -> float | None:
    """The median of the pairs' ratios: each pair's two figures were measured seconds apart, so
    the machine's drift cancels within a pair; the median keeps one disturbed pair from moving
    the result. None without pairs."""
    return statistics.median(p["fraction"] for p in pairs) if pairs else None


def evaluate_targets(
    runs: dict[str, ServerRun], ratios: list[dict[str, Any]], pairs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Issue 6's service targets, each with the measured value and whether it was met (None
    where this run could not measure it, e.g. 32 clients absent from the preset)."""
    by_level = {r["concurrency"]: r for r in ratios}
    side = runs.get(SIDECAR)
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, met: bool | None, note: str = "") -> None:
        out.append({"target": name, "value": value, "met": met, "note": note})

    r32 = by_level.get(32)
    errors32 = sum(r.levels[32]["errors"] for r in runs.values() if 32 in r.levels) if r32 else None
    note32 = f"errors at 32 clients (all servers): {errors32}" if errors32 is not None else ""
    for key, label, want in (("naive", NAIVE, 1.5), ("st", ST, 3.0)):
        v = r32.get(f"throughput_x_{key}") if r32 else None
        met = None if v is None else bool(v >= want and errors32 == 0)
        note = note32
        if label in runs and note:  # which dtype the baseline computed in belongs to the figure
            note += f"; {label} in {runs[label].settings.get('dtype', '?')}"
        add(f"32 clients: sidecar >= {want}x {label} throughput, no errors", v, met, note)
    r1 = by_level.get(1)
    for key, label in (("naive", NAIVE), ("st", ST)):
        v = r1.get(f"p50_minus_{key}_ms") if r1 else None
        add(f"1 client: p50 <= {label} p50 + 2 ms", v, None if v is None else bool(v <= 2.0))
    fraction, note, errors = saturated_fraction(pairs), "", 0
    if pairs:
        errors = sum(p["sidecar_errors"] for p in pairs)
        spread = [100.0 * p["fraction"] for p in pairs]
        note = (
            f"median of {len(pairs)} pairs (sidecar, raw runner) at {max(side.levels)} clients"
            if side and side.levels
            else f"median of {len(pairs)} pairs"
        )
        note += f", each {min(spread):.1f} to {max(spread):.1f} %; sidecar errors: {errors}"
        busy = max(p.get("loadgen_busy", 0.0) for p in pairs)  # absent in older results
        note += f"; load generator busy at most {100 * busy:.0f} %"
    add(
        "saturated throughput >= 85% of the raw runner",
        fraction,
        None if fraction is None else bool(fraction >= 0.85 and errors == 0),
        note,
    )
    return out


def _st_dtype_note(data: dict[str, Any]) -> str:
    st = data.get("st_dtype", data.get("dtype"))
    if ST not in data["servers"] or st == data.get("dtype"):
        return ""
    return (
        f" (sentence-transformers in {st}, as its users first run it; `--st-dtype same` puts it "
        "in the same dtype)"
    )


def write_service_section(results: ResultsDir, data: dict[str, Any]) -> None:
    levels = [int(k) for k in next(iter(data["servers"].values()))["levels"]]
    names = list(data["servers"])
    rows = []
    for level in levels:
        for name in names:
            r = data["servers"][name]["levels"][str(level)]
            side = r.get("sidecar", {})
            pad = side.get("mean_padding_ratio")
            rows.append(
                [
                    level,
                    name,
                    r["throughput_rps"],
                    r["p50_ms"],
                    r["p99_ms"],
                    r["errors"],
                    side.get("mean_batch_size"),
                    None if pad is None else 100.0 * pad,
                    side.get("captures"),
                ]
            )
    md = ["## Service: sidecar against two baselines over HTTP\n"]
    md.append(
        f"Each server alone on the machine, on {data.get('device', 'cpu')} in "
        f"{data.get('dtype', 'float32')}{_st_dtype_note(data)}, "
        f"torch intra-op threads = {data['threads']} in every "
        f"server (environment of all servers: "
        f"{', '.join(f'`{k}={v}`' for k, v in data['server_env'].items())}), "
        "one text per request from a fixed-seed mix (short/medium/long), "
        f"{data['preset']['requests']} requests per level and round after warm-up, load "
        f"generator in its own process ({data['transport']} HTTP/1.1 client). "
        f"{data['rounds']} round(s), servers in the order "
        f"{', '.join(data['order'])} (reversed every other round), rounds pooled.\n"
    )
    md.append(
        markdown_table(
            [
                "clients",
                "server",
                "req/s",
                "p50 ms",
                "p99 ms",
                "errors",
                "mean batch",
                "padding %",
                "captures in run",
            ],
            rows,
            digits=1,
        )
    )
    ratio_rows = [
        [
            r["concurrency"],
            r.get("throughput_x_naive"),
            r.get("throughput_x_st"),
            r.get("p50_minus_naive_ms"),
            r.get("p50_minus_st_ms"),
        ]
        for r in data["ratios"]
    ]
    md.append("\nRatios, sidecar against each baseline (same run):\n")
    md.append(
        markdown_table(
            [
                "clients",
                "throughput x naive",
                "throughput x sentence-transformers",
                "p50 - naive (ms)",
                "p50 - ST (ms)",
            ],
            ratio_rows,
        )
    )
    raw = data["raw_runner"]
    if raw is not None:
        pairs = data["saturation_pairs"]
        md.append(
            f"\nRaw runner ({raw['mode']}, the first {raw['texts']} texts of the list, as a "
            f"saturation run sends them, in "
            f"batches of {raw['batch_size']}, no HTTP, no tokenizer): "
            f"{raw['texts_per_s_median']:.1f} texts/s median of {raw['passes']} passes "
            f"({raw['ms_per_batch_median']:.1f} ms per batch; tokenizing costs "
            f"{raw['tokenize_ms_per_text']:.3f} ms per text on top). Saturation pairs, each a "
            f"sidecar run at {data['saturated_concurrency']} clients on warm connections and a "
            "raw pass seconds apart, with the sidecar up: "
            + ", ".join(f"{fmt(_pct(p['fraction']), 1)}%" for p in pairs)
            + f"; median **{fmt(_pct(data['saturated_fraction_of_raw']), 1)}%**.\n"
        )
    md.append("\nTargets (issue 6):\n")
    md.append(
        markdown_table(
            ["target", "measured", "met", "note"],
            [[t["target"], t["value"], t["met"], t.get("note", "")] for t in data["targets"]],
        )
    )
    settings = data["servers"].get(SIDECAR, {}).get("settings", {})
    if settings:
        md.append(
            "\nSidecar settings: "
            + ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items()))
            + "\n"
        )
    md.append("\n![service](service.png)\n")
    results.write_section("service", "\n".join(md), data)

    def series(key: str) -> dict[str, list[float | None]]:
        return {n: [data["servers"][n]["levels"][str(c)][key] for c in levels] for n in names}

    plot_service(
        levels,
        series("throughput_rps"),
        series("p50_ms"),
        series("p99_ms"),
        results.path / "service.png",
        raw_runner_rps=None if raw is None else raw["texts_per_s_median"],
    )


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x
