"""Async HTTP load generator and the text workload it sends.

N client coroutines, one keep-alive connection each, post one text per request until a fixed
number of requests has been sent, the closed-loop way a fleet of callers behaves: each client
sends its next request when the previous answer arrives. Latency is measured per request from
just before the send to the parsed and checked answer. Two transports: a minimal HTTP/1.1 client
on asyncio streams (default, the cheapest in client CPU) and `httpx.AsyncClient`.

Run it in its own process (`python -m bench.loadgen ...`) so it does not share a GIL with
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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from app.devices import available_cpus

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


# The rerank load: one query against RERANK_DOCS documents per request (the documents drawn from
# the same length mix as the texts above), POST /rerank in text-embeddings-inference's shape.
RERANK_DOCS = (20, 100)
LOADS = ("infer", "rerank")


def make_rerank_requests(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` rerank requests `{"query", "texts"}` with a fixed seed: a short query (3 to 12 words)
    and 20 to 100 documents of mixed length each; the same list on every machine."""
    if n < 1:
        raise ValueError(f"need at least one request, got n={n}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        docs = make_texts(rng.randint(*RERANK_DOCS), seed=seed * 1_000_003 + i + 1)
        query = " ".join(rng.choices(_WORDS, k=rng.randint(3, 12))).capitalize() + "?"
        out.append({"query": query, "texts": docs})
    return out


def texts_sent(texts: Sequence[str], count: int, start_index: int = 0) -> list[str]:
    """The texts `count` requests carry: request i sends texts[(start_index + i) % len(texts)],
    so every server (and the raw runner) gets the same sequence."""
    return [texts[(start_index + i) % len(texts)] for i in range(count)]


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
    # Units answered by the successful requests (texts; for the rerank load, documents scored,
    # i.e. query-document pairs) and their rate over the wall time.
    items: int = 0
    items_per_s: float = 0.0
    # CPU seconds the load generator used during the run (all its threads, every process of
    # it). Near `wall_seconds` per process it was busy all the time and may be what limited the
    # throughput (`busy`).
    client_cpu_s: float = 0.0
    client_processes: int = 1

    @property
    def busy(self) -> float:
        """The load generator's CPU over its processes' wall time (1.0: always busy)."""
        spent = self.wall_seconds * self.client_processes
        return self.client_cpu_s / spent if spent > 0 else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "client_busy": self.busy}


def summarise(
    url: str,
    concurrency: int,
    latencies_ok_s: Sequence[float],
    statuses: Sequence[str],
    wall_seconds: float,
    error_samples: Sequence[str] = (),
    items: int | None = None,
    client_cpu_s: float = 0.0,
    client_processes: int = 1,
) -> LoadResult:
    """Build a LoadResult from raw per-request observations. `statuses` has one entry per request
    sent: "ok" for a success, else the HTTP status as a string, "bad_body" for a 200 whose body is
    not one embedding, or the exception's class name. `items`: units the successes answered
    (default: one per success); `client_cpu_s`: the load generator's own CPU seconds."""
    counts = Counter(statuses)
    ok = counts.get("ok", 0)
    if ok != len(latencies_ok_s):
        raise ValueError(f"{ok} successes but {len(latencies_ok_s)} latencies")
    ms = [1000.0 * x for x in latencies_ok_s]
    items = ok if items is None else items
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
        items=items,
        items_per_s=items / wall_seconds if wall_seconds > 0 else 0.0,
        client_cpu_s=client_cpu_s,
        client_processes=client_processes,
    )


def pool(results: Sequence[LoadResult]) -> LoadResult:
    """One result from several runs of the same load one after another (e.g. rounds against
    restarted servers): counts and wall time add up, percentiles come from all latencies
    together. The url is the first run's (a restarted server may listen on another port)."""
    if not results:
        raise ValueError("nothing to pool")
    if len({r.concurrency for r in results}) != 1:
        raise ValueError("pooled runs must share their concurrency")
    wall = sum(r.wall_seconds for r in results)
    return _combine(results, results[0].concurrency, wall, results[0].client_processes)


def merge_concurrent(results: Sequence[LoadResult]) -> LoadResult:
    """One result from runs that went at the same time, the processes of one load: clients,
    counts and CPU add up, the wall time is the longest run's, percentiles come from all
    latencies together."""
    if not results:
        raise ValueError("nothing to merge")
    concurrency = sum(r.concurrency for r in results)
    wall = max(r.wall_seconds for r in results)
    processes = sum(r.client_processes for r in results)
    return _combine(results, concurrency, wall, processes)


def _combine(
    results: Sequence[LoadResult], concurrency: int, wall: float, processes: int
) -> LoadResult:
    latencies = [x / 1000.0 for r in results for x in r.latencies_ms]
    statuses: list[str] = []
    for r in results:
        for status, count in r.status_counts.items():
            statuses += [status] * count
    return summarise(
        results[0].url,
        concurrency,
        latencies,
        statuses,
        wall,
        [e for r in results for e in r.error_samples],
        sum(r.items for r in results),
        sum(r.client_cpu_s for r in results),
        processes,
    )


# One load-generator process keeps up with about this many closed-loop clients on a fast
# server; more clients are split over processes (see load_processes).
CLIENTS_PER_PROCESS = 32


def load_processes(concurrency: int, cpus: int | None = None) -> int:
    """Load-generator processes for `concurrency` clients: one per CLIENTS_PER_PROCESS clients,
    at most a quarter of the machine's CPUs so the server keeps the rest (1 on a small one)."""
    cpus = cpus if cpus is not None else available_cpus()
    return max(1, min(math.ceil(concurrency / CLIENTS_PER_PROCESS), cpus // 4))


def check_answer(status: int, body: bytes) -> str | None:
    """None when the answer is a 200 with one non-empty embedding, else why not.

    Parsed with orjson: the load generator shares the cores with the server it measures, and
    `json.loads` of a 384-float answer costs ~74 us (orjson ~7 us), about half of this client's
    CPU per request."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        embeddings = orjson.loads(body)["embeddings"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"bad body ({type(exc).__name__}): {body[:200]!r}"
    if not isinstance(embeddings, list) or len(embeddings) != 1 or not embeddings[0]:
        return f"expected one embedding, got {str(embeddings)[:200]}"
    return None


def check_rerank_answer(status: int, body: bytes, documents: int) -> str | None:
    """None when the answer is a 200 with text-embeddings-inference's rerank shape: a list of
    `documents` items, each with an `index` (every document's exactly once) and a numeric
    `score`; else why not."""
    if status != 200:
        return f"HTTP {status}: {body[:200]!r}"
    try:
        answer = orjson.loads(body)
    except ValueError as exc:
        return f"bad body ({type(exc).__name__}): {body[:200]!r}"
    if not isinstance(answer, list) or len(answer) != documents:
        return f"expected a list of {documents} results, got {str(answer)[:200]}"
    try:
        indices = sorted(item["index"] for item in answer)
        scores_ok = all(isinstance(item["score"], int | float) for item in answer)
    except (KeyError, TypeError) as exc:
        return f"bad result ({type(exc).__name__}): {str(answer)[:200]}"
    if indices != list(range(documents)) or not scores_ok:
        return f"results are not one index and score per document: {str(answer)[:200]}"
    return None


class RawHTTPConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams.

    The load generator shares the machine with the server it measures, so its own CPU per
    request matters: on the 2-core machine httpx.AsyncClient cost 1.2 ms (1 connection), 3.3 ms
    (32) and 6.1 ms (128) of client CPU per request, this 0.1 to 0.2 ms at any of them (1000
    requests against a toy server, process CPU time). Handles Content-Length and chunked
    answers, reconnects after `Connection: close` or an error.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http://host:port/path URLs are supported, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "Content-Type: application/json\r\nContent-Length: "
        ).encode()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        try:
            return await self._post(body)
        except BaseException:
            await self.close()  # the connection's state is unknown: start afresh next time
            raise

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        if self._writer is not None:
            try:
                return await self._exchange(body)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
            except (ConnectionResetError, BrokenPipeError):
                pass
            # A kept-alive connection the server closed while it sat idle (uvicorn's keep-alive
            # timeout is 5 s; a client idles that long between a slow warm-up and the run):
            # nothing was answered, so resend once on a new connection, as HTTP clients do.
            await self.close()
        return await self._exchange(body)

    async def _exchange(self, body: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        reader = self._reader
        assert reader is not None
        self._writer.write(self._head + str(len(body)).encode() + b"\r\n\r\n" + body)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunks.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            data = b"".join(c[:-2] for c in chunks)
        else:
            raise ValueError("answer has neither Content-Length nor chunked encoding")
        if headers.get("connection") == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


Sender = Callable[[bytes], Awaitable[tuple[int, bytes]]]
TRANSPORTS = ("raw", "httpx")


class LoadClient:
    """`concurrency` senders (one connection each) posting to one URL; reused across runs so
    the warm-up leaves its connections open for the measured run."""

    def __init__(self, url: str, concurrency: int, transport: str = "raw") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        self.url, self.concurrency, self.transport = url, concurrency, transport
        self._raw: list[RawHTTPConnection] = []
        self._httpx: httpx.AsyncClient | None = None
        if transport == "raw":
            self._raw = [RawHTTPConnection(url) for _ in range(concurrency)]
        else:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            self._httpx = httpx.AsyncClient(limits=limits, timeout=None)

    def senders(self) -> list[Sender]:
        if self._raw:
            return [conn.post for conn in self._raw]
        client = self._httpx
        assert client is not None
        headers = {"content-type": "application/json"}

        async def post(body: bytes) -> tuple[int, bytes]:
            response = await client.post(self.url, content=body, headers=headers)
            return response.status_code, response.content

        return [post] * self.concurrency

    async def aclose(self) -> None:
        for conn in self._raw:
            await conn.close()
        if self._httpx is not None:
            await self._httpx.aclose()

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def run_load(
    url: str,
    texts: Sequence[Any],
    *,
    concurrency: int,
    num_requests: int,
    timeout_s: float = 60.0,
    start_index: int = 0,
    transport: str = "raw",
    client: LoadClient | None = None,
    load: str = "infer",
) -> LoadResult:
    """Send `num_requests` POSTs of `{"inputs": [text]}` to `url` from `concurrency` clients.

    Request i carries `texts[(start_index + i) % len(texts)]`, so every server sees the same
    sequence of texts. The bodies are encoded before the clock starts to keep the client's own
    CPU use out of the measurement as far as possible. Pass `client` to reuse its open
    connections (warm-up, then the measured run).

    `load="rerank"`: `texts` holds rerank requests (`make_rerank_requests`), each posted as is
    (`{"query", "texts"}`) and answered with one index and score per document; `items` counts
    the documents (pairs) scored.
    """
    if concurrency < 1 or num_requests < 1:
        raise ValueError("concurrency and num_requests must be >= 1")
    if not texts:
        raise ValueError("no texts to send")
    if load not in LOADS:
        raise ValueError(f"load must be one of {LOADS}, got {load!r}")
    if client is None:
        async with LoadClient(url, concurrency, transport) as own:
            return await run_load(
                url,
                texts,
                concurrency=concurrency,
                num_requests=num_requests,
                timeout_s=timeout_s,
                start_index=start_index,
                client=own,
                load=load,
            )
    if client.concurrency != concurrency:
        raise ValueError(f"client has {client.concurrency} connections, asked for {concurrency}")
    sent = [texts[(start_index + i) % len(texts)] for i in range(num_requests)]
    if load == "rerank":
        bodies = [json.dumps(req).encode() for req in sent]
        units = [len(req["texts"]) for req in sent]
    else:
        bodies = [json.dumps({"inputs": [text]}).encode() for text in sent]
        units = [1] * num_requests
    latencies: list[float] = []
    items = 0
    statuses: list[str] = []
    samples: list[str] = []
    next_index = 0

    async def client_loop(send: Sender) -> None:
        nonlocal next_index, items
        while next_index < num_requests:
            body, count = bodies[next_index], units[next_index]
            next_index += 1  # single-threaded event loop: no lock needed between awaits
            t0 = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(send(body), timeout_s)
            except (
                OSError,  # connection refused or reset; asyncio's TimeoutError is one too
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                httpx.HTTPError,
                ValueError,  # an answer the raw client cannot parse
            ) as exc:
                problem: str | None = f"{type(exc).__name__}: {exc}"
                statuses.append(type(exc).__name__)
            else:
                if load == "rerank":
                    problem = check_rerank_answer(status, data, count)
                else:
                    problem = check_answer(status, data)
                if problem is None:
                    items += count
                    statuses.append("ok")
                elif status == 200:
                    statuses.append("bad_body")
                else:
                    statuses.append(str(status))
            if problem is None:
                latencies.append(time.perf_counter() - t0)
            elif len(samples) < 5:
                samples.append(problem)

    t_start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client_loop(send) for send in client.senders()))
    wall = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    return summarise(url, concurrency, latencies, statuses, wall, samples, items, cpu)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen",
        description="Closed-loop async HTTP load against one /infer-style endpoint; prints JSON.",
    )
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000/infer")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0, help="requests sent first, not counted")
    parser.add_argument(
        "--texts-file",
        type=Path,
        help="JSON list of texts, or of rerank requests with --load rerank (default: the mix)",
    )
    parser.add_argument(
        "--load",
        choices=LOADS,
        default="infer",
        help="infer: one text per request; rerank: one query and its documents per request",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the default text mix")
    parser.add_argument("--start-index", type=int, default=0, help="first text sent")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    parser.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="raw",
        help="raw: HTTP/1.1 on asyncio streams (cheapest); httpx: httpx.AsyncClient",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="after the warm-up, write 'ready' to stderr and start the measured run when a "
        "line arrives on stdin (several processes of one load start together)",
    )
    args = parser.parse_args(argv)

    texts: list[Any]
    if args.texts_file is not None:
        texts = json.loads(args.texts_file.read_text())
    elif args.load == "rerank":
        texts = make_rerank_requests(max(args.requests, 16), seed=args.seed)
    else:
        texts = make_texts(max(args.requests, 64), seed=args.seed)

    async def go() -> LoadResult:
        async with LoadClient(args.url, args.concurrency, args.transport) as client:
            if args.warmup > 0:
                # Warm-up on the same client (its connections stay open) with texts from the
                # middle of the list, so the measured run starts warm but not on cached texts.
                await run_load(
                    args.url,
                    texts,
                    concurrency=args.concurrency,
                    num_requests=args.warmup,
                    timeout_s=args.timeout,
                    start_index=len(texts) // 2,
                    client=client,
                    load=args.load,
                )
            if args.gate:
                print("ready", file=sys.stderr, flush=True)
                sys.stdin.readline()
            return await run_load(
                args.url,
                texts,
                concurrency=args.concurrency,
                num_requests=args.requests,
                timeout_s=args.timeout,
                start_index=args.start_index,
                client=client,
                load=args.load,
            )

    result = asyncio.run(go())
    json.dump(result.to_dict(), sys.stdout, allow_nan=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
