"""Overload: far more concurrent requests than the queue holds.

Against a real `python -m app serve` process (toy model) with a 16-text queue, bursts of 400
simultaneous requests: the excess must be refused at once with 503 + Retry-After, every admitted
request answered with exactly the model's unbatched embeddings, the refusals counted by reason in
/metrics, the queue empty afterwards and the server's resident memory bounded. In-process, a
slow model and a short deadline show the other refusal: requests that waited too long get 503
`timeout`, counted under their own reason.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from server_process import SidecarProcess
from test_hardening_support import ADMIN, TOKEN, metric, run, serving

from app.cudagraph import is_capturing
from models import make_toy_encoder

MAX_QUEUE = 16
MAX_INPUTS = 4
BURST = 400
BURSTS = 3
RETRY_AFTER = 2
POOL = [f"overload text {i} " + "word " * (i % 7) for i in range(24)]


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    enc = make_toy_encoder()
    return {t: enc.embed([t])[0] for t in POOL}


async def burst(url: str, rng: random.Random) -> list[tuple[list[str], httpx.Response]]:
    limits = httpx.Limits(max_connections=BURST, max_keepalive_connections=BURST)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        bodies = [rng.sample(POOL, rng.randint(1, MAX_INPUTS)) for _ in range(BURST)]
        gate = asyncio.Event()

        async def one(texts: list[str]) -> tuple[list[str], httpx.Response]:
            await gate.wait()  # all at once
            route = rng.choice(["/infer", "/v1/embeddings"])
            body = {"inputs": texts} if route == "/infer" else {"input": texts}
            return texts, await client.post(route, json=body)

        tasks = [asyncio.create_task(one(b)) for b in bodies]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks)


def rows_of(resp: httpx.Response) -> list[list[float]]:
    body = resp.json()
    if "embeddings" in body:
        return list(body["embeddings"])
    return [item["embedding"] for item in body["data"]]


@pytest.mark.slow
def test_overload_refuses_the_excess_and_answers_the_rest(
    tmp_path: Path, expected: dict[str, torch.Tensor]
) -> None:
    env = {
        "SIDECAR_MODEL_PATH": "toy",
        "SIDECAR_DTYPE": "float32",  # compared with the float32 toy reference at 1e-5
        "SIDECAR_ADMIN_TOKEN": TOKEN,
        "SIDECAR_MAX_QUEUE": str(MAX_QUEUE),
        "SIDECAR_MAX_INPUTS_PER_REQUEST": str(MAX_INPUTS),
        "SIDECAR_MAX_BATCH_SIZE": "4",
        "SIDECAR_REQUEST_TIMEOUT_S": "120",  # only the queue bound refuses here
        "SIDECAR_RETRY_AFTER_S": str(RETRY_AFTER),
        "SIDECAR_CAPTURE_THRESHOLD": "1",
    }
    rng = random.Random(7)
    statuses: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    with SidecarProcess(env, tmp_path / "server.log") as server:
        server.wait_ready()
        run(burst(server.url, rng))  # warm-up: graphs captured, allocator and sockets grown
        rss_base = server.rss_bytes()
        before = httpx.get(server.url + "/metrics").text
        rss_peak = rss_base
        stop = threading.Event()

        def sample_rss() -> None:
            nonlocal rss_peak
            while not stop.is_set():
                rss_peak = max(rss_peak, server.rss_bytes())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        try:
            for _ in range(BURSTS):
                for texts, resp in run(burst(server.url, rng)):
                    statuses[str(resp.status_code)] += 1
                    if resp.status_code == 200:
                        rows = torch.tensor(rows_of(resp))
                        want = torch.stack([expected[t] for t in texts])
                        torch.testing.assert_close(rows, want, atol=1e-5, rtol=0)
                    else:
                        assert resp.status_code == 503, resp.text
                        assert resp.headers["retry-after"] == str(RETRY_AFTER)
                        err = resp.json()["error"]
                        codes[err["code"]] += 1
                        assert "queue is full" in err["message"]
        finally:
            stop.set()
            sampler.join()
        rss_end = server.rss_bytes()
        after = httpx.get(server.url + "/metrics").text
        stats = httpx.get(server.url + "/admin/stats", headers=ADMIN).json()
        good = httpx.post(server.url + "/infer", json={"inputs": POOL[:3]})
        assert good.status_code == 200
        exit_code = server.stop()

    total = BURST * BURSTS
    print(
        f"\noverload: {total} requests in {BURSTS} bursts of {BURST}, queue {MAX_QUEUE} texts: "
        f"{dict(statuses)}; RSS {rss_base / 2**20:.1f} MB -> peak {rss_peak / 2**20:.1f} MB -> "
        f"{rss_end / 2**20:.1f} MB"
    )
    # At least the queue's worth of requests is admitted per burst (each has <= MAX_INPUTS texts).
    assert statuses["200"] >= BURSTS * MAX_QUEUE // MAX_INPUTS, statuses
    assert statuses["503"] >= total // 2, statuses
    assert statuses["200"] + statuses["503"] == total, statuses
    assert set(codes) == {"queue_full"}, codes
    rejected = metric(after, "sidecar_rejected_total", reason="queue_full") - metric(
        before, "sidecar_rejected_total", reason="queue_full"
    )
    assert rejected == statuses["503"], (rejected, statuses)
    for reason in ("timeout", "draining", "not_ready"):
        assert metric(after, "sidecar_rejected_total", reason=reason) == 0
    served_503 = sum(
        metric(after, "sidecar_requests_total", route=r, status="503")
        - metric(before, "sidecar_requests_total", route=r, status="503")
        for r in ("/infer", "/v1/embeddings")
    )
    assert served_503 == statuses["503"]
    assert metric(after, "sidecar_queue_depth") == 0 and stats["queue_depth"] == 0
    # Bounded memory: refusing costs nothing that stays, and the bursts do not accumulate.
    assert rss_peak - rss_base < 64 * 2**20, (rss_base, rss_peak)
    assert (rss_end - rss_base) / rss_base < 0.10, (rss_base, rss_end)
    assert exit_code == 0


def test_requests_past_their_deadline_are_refused_and_counted() -> None:
    """A model slower than the traffic: queued requests past request_timeout_s get 503 timeout."""

    def slow(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not is_capturing():
            time.sleep(0.15)  # (B, S) forward that takes 150 ms

    async def scenario() -> None:
        async with serving(
            request_timeout_s=0.4, max_batch_size=2, capture_threshold=1000, retry_after_s=3
        ) as (app, client):
            handle = app.state.engine.encoder.model.register_forward_pre_hook(slow)
            try:
                texts = [f"deadline {i}" for i in range(12)]
                resps = await asyncio.gather(
                    *[client.post("/infer", json={"inputs": [t]}) for t in texts]
                )
            finally:
                handle.remove()
            status = Counter(r.status_code for r in resps)
            print(f"\ndeadline: 12 requests, 150 ms per batch, 0.4 s timeout: {dict(status)}")
            assert status[200] >= 2 and status[503] >= 4, status
            assert set(status) == {200, 503}, status
            enc = make_toy_encoder()
            for t, r in zip(texts, resps, strict=True):
                if r.status_code == 503:
                    assert (
                        r.json()["error"]["code"] == "timeout" and r.headers["retry-after"] == "3"
                    )
                else:
                    got = torch.tensor(r.json()["embeddings"][0])
                    torch.testing.assert_close(got, enc.embed([t])[0], atol=1e-5, rtol=0)
            text = (await client.get("/metrics")).text
            assert metric(text, "sidecar_rejected_total", reason="timeout") == status[503]
            assert metric(text, "sidecar_rejected_total", reason="queue_full") == 0
            # Timed-out requests left the queue; the service is fine afterwards.
            resp = await client.post("/infer", json={"inputs": ["after"]})
            assert resp.status_code == 200
            stats = (await client.get("/admin/stats", headers=ADMIN)).json()
            assert stats["queue_depth"] == 0

    run(scenario())
