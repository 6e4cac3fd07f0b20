"""The load generator against a tiny real HTTP server (uvicorn in a thread, raw ASGI app)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bench.loadgen import (
    LENGTH_MIX,
    TRANSPORTS,
    load_processes,
    make_texts,
    merge_concurrent,
    percentile,
    pool,
    run_load,
    summarise,
)
from bench.service import run_loadgen

ROOT = Path(__file__).resolve().parents[2]


async def tiny_app(scope, receive, send) -> None:
    """POST /infer {"inputs": [text]}: "fail..." answers 500, "bad..." a 200 without
    embeddings, "sleep:S" sleeps S seconds first, "chunked..." streams its answer in two
    chunks (no Content-Length), "close..." closes the connection after answering; everything
    else one embedding."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    text = json.loads(body)["inputs"][0]
    status, payload = 200, {"embeddings": [[0.6, 0.8]]}
    if text.startswith("fail"):
        status, payload = 500, {"error": {"code": "boom", "message": "boom"}}
    elif text.startswith("bad"):
        payload = {"nothing": 1}
    elif text.startswith("sleep:"):
        await asyncio.sleep(float(text.split(":", 1)[1]))
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json")]
    if text.startswith("close"):
        headers.append((b"connection", b"close"))
    if not text.startswith("chunked"):
        headers.append((b"content-length", str(len(data)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if text.startswith("chunked"):
        await send({"type": "http.response.body", "body": data[:5], "more_body": True})
        await send({"type": "http.response.body", "body": data[5:]})
    else:
        await send({"type": "http.response.body", "body": data})


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(tiny_app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "tiny server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/infer"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 25, 1.75),
        ([4.0, 1.0, 3.0, 2.0], 75, 3.25),  # unsorted input
        ([7.0], 99, 7.0),
        (list(range(101)), 99, 99.0),
    ],
)
def test_percentile_matches_linear_interpolation(values, q, expected) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], 101)


def test_summarise_counts_and_rates() -> None:
    r = summarise("u", 2, [0.010, 0.020, 0.030], ["ok", "500", "ok", "ok", "ReadTimeout"], 0.5)
    assert (r.requests, r.ok, r.errors) == (5, 3, 2)
    assert r.throughput_rps == pytest.approx(6.0)
    assert r.p50_ms == pytest.approx(20.0)
    assert r.max_ms == pytest.approx(30.0)
    assert r.status_counts == {"500": 1, "ReadTimeout": 1, "ok": 3}
    with pytest.raises(ValueError):
        summarise("u", 1, [0.1], ["ok", "ok"], 1.0)


def test_pool_adds_counts_and_pools_latencies() -> None:
    a = summarise("u", 2, [0.010, 0.030], ["ok", "ok", "500"], 1.0, client_cpu_s=0.25)
    b = summarise("u", 2, [0.020, 0.040], ["ok", "ok"], 3.0, client_cpu_s=0.5)
    p = pool([a, b])
    assert (p.requests, p.ok, p.errors) == (5, 4, 1)
    assert p.wall_seconds == pytest.approx(4.0)
    assert p.client_cpu_s == pytest.approx(0.75)
    assert p.throughput_rps == pytest.approx(1.0)
    assert p.p50_ms == pytest.approx(25.0)  # median of 10, 20, 30, 40
    assert p.status_counts == {"500": 1, "ok": 4}
    with pytest.raises(ValueError):
        pool([a, summarise("u", 3, [], [], 1.0)])
    with pytest.raises(ValueError):
        pool([])


def test_merge_concurrent_takes_the_longest_wall_and_adds_the_rest() -> None:
    a = summarise("u", 2, [0.010, 0.030], ["ok", "ok", "500"], 1.0, client_cpu_s=0.5)
    b = summarise("u", 3, [0.020, 0.040], ["ok", "ok"], 2.0, client_cpu_s=0.5)
    m = merge_concurrent([a, b])
    assert (m.concurrency, m.requests, m.ok, m.errors) == (5, 5, 4, 1)
    assert m.wall_seconds == pytest.approx(2.0)  # they ran side by side
    assert m.throughput_rps == pytest.approx(2.0)
    assert m.p50_ms == pytest.approx(25.0)
    assert (m.client_processes, m.client_cpu_s) == (2, pytest.approx(1.0))
    assert m.busy == pytest.approx(1.0 / (2 * 2.0))
    with pytest.raises(ValueError):
        merge_concurrent([])


@pytest.mark.parametrize(
    ("clients", "cpus", "expected"),
    [(1, 16, 1), (32, 16, 1), (33, 16, 2), (128, 16, 4), (128, 64, 4), (128, 2, 1), (512, 8, 2)],
)
def test_load_processes_split_clients_but_leave_the_server_its_cores(
    clients: int, cpus: int, expected: int
) -> None:
    assert load_processes(clients, cpus) == expected


def test_a_load_over_several_processes_starts_together_and_merges(
    server_url: str, tmp_path: Path
) -> None:
    # Three processes of 2 clients, 100 ms a request: run together, ~0.2 s for 12 requests
    # (one after another they would take ~0.6 s after their warm-ups).
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(["sleep:0.1"]))
    data = run_loadgen(server_url, texts_file, 6, 12, warmup=3, processes=3)
    assert (data["concurrency"], data["requests"], data["ok"]) == (6, 12, 12)
    assert data["client_processes"] == 3 and data["client_cpu_s"] > 0.0
    assert 0.19 <= data["wall_seconds"] < 0.45
    assert data["throughput_rps"] == pytest.approx(12 / data["wall_seconds"])


def test_text_mix_is_fixed_and_mixed() -> None:
    a, b = make_texts(400, seed=3), make_texts(400, seed=3)
    assert a == b
    assert make_texts(400, seed=4) != a
    words = [len(t.split()) for t in a]
    lo, hi = min(m[2] for m in LENGTH_MIX), max(m[3] for m in LENGTH_MIX)
    assert lo <= min(words) and max(words) <= hi
    # every length class shows up in a list this size
    for _, _, wmin, wmax in LENGTH_MIX:
        assert any(wmin <= w <= wmax for w in words)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_run_load_counts_requests_errors_and_latency(server_url: str, transport: str) -> None:
    # 40 requests cycling through 4 kinds: 10 fast, 10 failing, 10 bad bodies, 10 slow (60 ms)
    texts = ["hello world", "fail now", "bad body", "sleep:0.06"]
    r = asyncio.run(
        run_load(server_url, texts, concurrency=4, num_requests=40, transport=transport)
    )
    assert r.requests == 40
    assert r.ok == 20 and r.errors == 20
    assert r.status_counts == {"500": 10, "bad_body": 10, "ok": 20}
    assert any("HTTP 500" in e for e in r.error_samples)
    assert any("bad body" in e for e in r.error_samples)
    # half the successes slept 60 ms: the max and p99 see it, the median sits at the boundary
    assert r.max_ms >= 60.0
    assert r.p99_ms >= 60.0
    assert r.throughput_rps == pytest.approx(20 / r.wall_seconds)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_clients_really_run_concurrently(server_url: str, transport: str) -> None:
    # 16 requests of 100 ms each: one client needs >= 1.6 s, eight need about 0.2 s.
    texts = ["sleep:0.1"]
    r = asyncio.run(
        run_load(server_url, texts, concurrency=8, num_requests=16, transport=transport)
    )
    assert r.ok == 16
    assert 0.19 <= r.wall_seconds < 0.9
    assert r.p50_ms >= 100.0
    # the clients mostly wait: their own CPU is there, and far below the wall time
    assert 0.0 < r.client_cpu_s < 0.5 * r.wall_seconds


def test_raw_transport_handles_chunked_and_connection_close(server_url: str) -> None:
    texts = ["chunked one", "close after this", "plain", "chunked two", "close again"]
    r = asyncio.run(run_load(server_url, texts, concurrency=2, num_requests=20, transport="raw"))
    assert (r.ok, r.errors) == (20, 0), r.error_samples


@pytest.mark.parametrize(
    ("transport", "error"), [("raw", "ConnectionRefusedError"), ("httpx", "ConnectError")]
)
def test_connection_errors_are_counted_not_raised(transport: str, error: str) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/infer"
    r = asyncio.run(run_load(url, ["x"], concurrency=2, num_requests=6, transport=transport))
    assert r.ok == 0 and r.errors == 6
    assert r.status_counts == {error: 6}
    assert math.isnan(r.p50_ms) and r.throughput_rps == 0.0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_loadgen_process_prints_json(server_url: str, tmp_path: Path, transport: str) -> None:
    texts_file = tmp_path / "texts.json"
    texts_file.write_text(json.dumps(["one", "two", "three"]))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--url",
            server_url,
            "--concurrency",
            "3",
            "--requests",
            "12",
            "--warmup",
            "3",
            "--texts-file",
            str(texts_file),
            "--transport",
            transport,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["requests"] == 12 and data["ok"] == 12 and data["errors"] == 0
    assert data["concurrency"] == 3
    assert data["p50_ms"] > 0
