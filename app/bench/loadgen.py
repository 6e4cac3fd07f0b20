"""Async HTTP load generator and the text workload it sends.

N client coroutines share one `httpx.AsyncClient` (one keep-alive connection each) and post one
text per request until a fixed number of requests has been sent, the closed-loop way a fleet of
callers behaves: each client sends its next request when the previous answer arrives. Latency is
measured per request from just before the send to the parsed answer.

Run it in its own process (`python -m app.bench.loadgen ...`) so it does not share a GIL with
the server it measures; the service benchmark does exactly that and reads the JSON it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

# A fixed vocabulary so the mix does not depend on any file on the machine. Common English
# words: each is one WordPiece token, so a text of W words is about W + 2 tokens.
_WORDS = (
    "the of and to in is was for on that with as by at from his her an which it be are were "
    "this had not but or have they first one their its new after who has all two also been "
    "more other when time there into can would about only over most some these states year "
    "world city school between during under many years people well water war several then "
    "where may made while state part family known work such high both early through however "
    "name later second since music made album team season government national house game "
    "series being life same local small public film called three main include large best "
    "long number area found system used north south east west river based before including "
    "group back court company home members country found club service general power around "
    "model graph memory batch request server latency throughput replay capture shape token"
).split()

# (name, share of requests, min words, max words). Long texts reach about 200 words, close to
# the model's 256-token truncation, so the longest sequence bucket is exercised.
LENGTH_MIX: tuple[tuple[str, float, int, int], ...] = (
    ("short", 0.5, 3, 12),
    ("medium", 0.35, 20, 60),
    ("long", 0.15, 100, 200),
)


def make_texts(n: int, seed: int = 0) -> list[str]:
    """`n` texts drawn from LENGTH_MIX with a fixed seed: the same list on every machine."""
    if n < 1:
        raise ValueError(f"need at least one text, got n={n}")
    rng = random.Random(seed)
    names = [m[0] for m in LENGTH_MIX]
    weights = [m[1] for m in LENGTH_MIX]
    bounds = {m[0]: (m[2], m[3]) for m in LENGTH_MIX}
    texts = []
    for _ in range(n):
        lo, hi = bounds[rng.choices(names, weights)[0]]
        words = rng.choices(_WORDS, k=rng.randint(lo, hi))
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's
    default). NaN for an empty list."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class LoadResult:
    """What one load run measured. Latencies in milliseconds; throughput counts only successful
    requests over the wall time of the whole run."""

    url: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    wall_seconds: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    status_counts: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    # Every successful request's latency (ms, in completion order), so runs can be pooled.
    latencies_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def summarise(
    url: str,
    concurrency: int,
    latencies_ok_s: Sequence[float],
    statuses: Sequence[str],
    wall_seconds: float,
    error_samples: Sequence[str] = (),
) -> LoadResult:
    """Build a LoadResult from raw per-request observations. `statuses` has one entry per request
    sent: "ok" for a success, else the HTTP status as a string, "bad_body" for a 200 whose body is
    not one embedding, or the exception's class name."""
    counts = Counter(statuses)
    ok = counts.get("ok", 0)
    if ok != len(latencies_ok_s):
        raise ValueError(f"{ok} successes but {len(latencies_ok_s)} latencies")
    ms = [1000.0 * x for x in latencies_ok_s]
    return LoadResult(
        url=url,
        concurrency=concurrency,
        requests=len(statuses),
        ok=ok,
        errors=len(statuses) - ok,
        wall_seconds=wall_seconds,
        throughput_rps=ok / wall_seconds if wall_seconds > 0 else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else math.nan,
        max_ms=max(ms) if ms else math.nan,
        status_counts=dict(sorted(counts.items())),
        error_samples=list(error_samples)[:5],
        latencies_ms=ms,
    )


def pool(results: Sequence[LoadResult]) -> LoadResult:
    """One result from several runs of the same load (e.g. rounds against restarted servers):
    counts and wall time add up, percentiles come from all latencies together. The url is the
    first run's (a restarted server may listen on another port)."""
    if not results:
        raise ValueError("nothing to pool")
    if len({r.concurrency for r in results}) != 1:
        raise ValueError("pooled runs must share their concurrency")
    latencies = [x / 1000.0 for r in results for x in r.latencies_ms]
    statuses: list[str] = []
    for r in results:
        for status, count in r.status_counts.items():
            statuses += [status] * count
    samples = [e for r in results for e in r.error_samples]
    wall = sum(r.wall_seconds for r in results)
    return summarise(results[0].url, results[0].concurrency, latencies, statuses, wall, samples)


def _check_answer(response: httpx.Response) -> str | None:
    """None when the answer is a 200 with one non-empty embedding, else why not."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    try:
        embeddings = response.json()["embeddings"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"bad body ({type(exc).__name__}): {response.text[:200]}"
    if not isinstance(embeddings, list) or len(embeddings) != 1 or not embeddings[0]:
        return f"expected one embedding, got {str(embeddings)[:200]}"
    return None


async def run_load(
    url: str,
    texts: Sequence[str],
    *,
    concurrency: int,
    num_requests: int,
    timeout_s: float = 60.0,
    start_index: int = 0,
    client: httpx.AsyncClient | None = None,
) -> LoadResult:
    """Send `num_requests` POSTs of `{"inputs": [text]}` to `url` from `concurrency` clients.

    Request i carries `texts[(start_index + i) % len(texts)]`, so every server sees the same
    sequence of texts. The bodies are encoded before the clock starts to keep the client's own
    CPU use out of the measurement as far as possible. Pass `client` to reuse its open
    connections (warm-up, then the measured run).
    """
    if concurrency < 1 or num_requests < 1:
        raise ValueError("concurrency and num_requests must be >= 1")
    if not texts:
        raise ValueError("no texts to send")
    if client is None:
        async with make_client(concurrency, timeout_s) as own:
            return await run_load(
                url,
                texts,
                concurrency=concurrency,
                num_requests=num_requests,
                start_index=start_index,
                client=own,
            )
    bodies = [
        json.dumps({"inputs": [texts[(start_index + i) % len(texts)]]}).encode()
        for i in range(num_requests)
    ]
    headers = {"content-type": "application/json"}
    latencies: list[float] = []
    statuses: list[str] = []
    samples: list[str] = []
    next_index = 0

    async def client_loop() -> None:
        nonlocal next_index
        while next_index < num_requests:
            body = bodies[next_index]
            next_index += 1  # single-threaded event loop: no lock needed between awaits
            t0 = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                problem = _check_answer(response)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                statuses.append(type(exc).__name__)
            else:
                if problem is None:
                    statuses.append("ok")
                elif response.status_code == 200:
                    statuses.append("bad_body")
                else:
                    statuses.append(str(response.status_code))
            if problem is None:
                latencies.append(time.perf_counter() - t0)
            elif len(samples) < 5:
                samples.append(problem)

    t_start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    wall = time.perf_counter() - t_start
    return summarise(url, concurrency, latencies, statuses, wall, samples)


def make_client(concurrency: int, timeout_s: float = 60.0) -> httpx.AsyncClient:
    """One keep-alive connection per concurrent client, no more."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.bench.loadgen",
        description="Closed-loop async HTTP load against one /infer-style endpoint; prints JSON.",
    )
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/infer")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0, help="requests sent first, not counted")
    parser.add_argument("--texts-file", type=Path, help="JSON list of texts (default: the mix)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default text mix")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    args = parser.parse_args(argv)

    if args.texts_file is not None:
        texts = json.loads(args.texts_file.read_text())
    else:
        texts = make_texts(max(args.requests, 64), seed=args.seed)

    async def go() -> LoadResult:
        async with make_client(args.concurrency, args.timeout) as client:
            if args.warmup > 0:
                # Warm-up on the same client (its connections stay open) with texts from the
                # middle of the list, so the measured run starts warm but not on cached texts.
                await run_load(
                    args.url,
                    texts,
                    concurrency=args.concurrency,
                    num_requests=args.warmup,
                    start_index=len(texts) // 2,
                    client=client,
                )
            return await run_load(
                args.url,
                texts,
                concurrency=args.concurrency,
                num_requests=args.requests,
                client=client,
            )

    result = asyncio.run(go())
    json.dump(result.to_dict(), sys.stdout, allow_nan=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
