"""Faults inside the service: a model that raises, captures that run out of memory, a memory
budget that cannot hold the graphs, clients that leave in the middle of a batch.

Faults are real faults of the loaded model: forward hooks registered on the SentenceModel the
engine loaded (reached through the app's engine), which raise (or block) in the worker thread
exactly where a broken kernel or an out-of-memory would. Nothing of the project is mocked.
The app runs in-process over ASGI with its lifespan (toy model); the disconnect check also runs
against a real `python -m app serve` process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI
from server_process import SidecarProcess
from test_hardening_support import (
    ADMIN,
    TOKEN,
    assert_answers,
    assert_envelope,
    metric,
    reference,
    run,
    serving,
    settled,
    stats,
    the_model,
)

from app.cudagraph import is_capturing


class FailOnce:
    """A forward pre-hook that, once armed, waits until `queued` more texts sit in the queue
    (so the next batch is formed while this one fails), then raises in the model."""

    def __init__(self, app: FastAPI, queued: int) -> None:
        self.engine = app.state.engine
        self.queued = queued
        self.armed = False
        self.entered = threading.Event()
        self.raised = 0
        self.batch_rows: int | None = None

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not self.armed or is_capturing():
            return
        self.armed = False
        shape = getattr(args[0], "shape", None) if args else None
        self.batch_rows = int(shape[0]) if shape else None
        self.entered.set()
        deadline = time.monotonic() + 10
        while self.engine.queue_depth < self.queued and time.monotonic() < deadline:
            time.sleep(0.002)
        self.raised += 1
        raise RuntimeError("injected fault: CUDA error: an illegal memory access was encountered")


# --------------------------------------------------------------------------- model faults
TEXT_A = "the first batch will fail"
TEXT_B = "the second batch must work"


@pytest.mark.parametrize(
    ("graph_mode", "threshold", "path"),
    [("FULL", 1, "replay"), ("FULL", 1000, "eager"), ("PIECEWISE", 1, "replay")],
)
def test_a_model_fault_fails_only_its_batch(graph_mode: str, threshold: int, path: str) -> None:
    async def scenario() -> None:
        async with serving(
            graph_mode=graph_mode,
            capture_threshold=threshold,
            max_batch_wait_ms=100,  # the 3 requests of wave A form one batch
            max_batch_size=8,
            idle_prewarm_top_k=0,  # no predicted captures that would run into the armed hook
        ) as (app, client):

            def post(texts: list[str]) -> list[asyncio.Task[httpx.Response]]:
                return [
                    asyncio.create_task(client.post("/infer", json={"inputs": [t]})) for t in texts
                ]

            # The same two batch shapes unarmed first (3 texts, then 2), so that in the "replay"
            # variants the armed wave replays captured graphs.
            for texts in ([TEXT_A] * 3, [TEXT_B] * 2):
                assert all(r.status_code == 200 for r in await asyncio.gather(*post(texts)))
            await settled(client)  # captured in the idle gaps, before the hook is armed
            hook = FailOnce(app, queued=2)
            # On every submodule: PIECEWISE never calls the model itself, only its pieces.
            handles = [m.register_forward_pre_hook(hook) for m in the_model(app).modules()]
            try:
                before = await stats(client)
                hook.armed = True
                wave_a = post([TEXT_A] * 3)
                assert await asyncio.to_thread(hook.entered.wait, 10), "batch A never ran"
                wave_b = post([TEXT_B] * 2)  # queued while batch A is on the worker
                bad = await asyncio.gather(*wave_a)
                good = await asyncio.gather(*wave_b)
                after = await stats(client)
            finally:
                for h in handles:
                    h.remove()

            assert hook.raised == 1 and hook.batch_rows is not None and hook.batch_rows >= 3
            for resp in bad:  # every request of the failed batch: 500 with the envelope
                assert_envelope(resp, 500, "inference_failed")
            expected_b = reference([TEXT_B])[0]
            for resp in good:  # the batch formed behind it: answered, and correctly
                assert resp.status_code == 200, resp.text
                got = torch.tensor(resp.json()["embeddings"][0])
                torch.testing.assert_close(got, expected_b, atol=1e-5, rtol=0)
            if path == "replay":
                assert after["hits"] - before["hits"] >= 2, (before, after)
            else:
                assert after["captures"] == before["captures"] == 0
                assert after["eager_runs"] - before["eager_runs"] >= 2
            # Later batches, of any shape, succeed; nothing is left queued.
            await assert_answers(client, [TEXT_A, "and another one", "x"])
            assert after["queue_depth"] == 0 and (await stats(client))["queue_depth"] == 0
            text = (await client.get("/metrics")).text
            assert metric(text, "sidecar_requests_total", route="/infer", status="500") == 3

    run(scenario())


# --------------------------------------------------------------------------- capture faults
def oom_while_capturing(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
    # What the CUDA caching allocator raises when a capture cannot get its memory.
    if is_capturing():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")


SHAPES = [["short"], ["a somewhat longer text with more tokens in it"] * 3, ["x", "y"] * 4]


@pytest.mark.parametrize("graph_mode", ["FULL", "PIECEWISE"])
def test_out_of_memory_during_capture_falls_back_to_eager(graph_mode: str) -> None:
    async def scenario() -> None:
        async with serving(graph_mode=graph_mode, capture_threshold=1) as (app, client):
            # On every submodule: in PIECEWISE the captured pieces are layers, not the model.
            handles = [
                m.register_forward_pre_hook(oom_while_capturing) for m in the_model(app).modules()
            ]
            try:
                for _ in range(2):
                    for texts in SHAPES:
                        await assert_answers(client, texts)
                        await settled(client)  # the capture in the gap fails, and backs off
                s = await stats(client)
                text = (await client.get("/metrics")).text
            finally:
                for h in handles:
                    h.remove()
            assert s["capture_failures"] >= len(SHAPES) and s["captures"] == 0, s
            assert s["cached_graphs"] == 0 and s["eager_runs"] >= 2 * len(SHAPES), s
            assert metric(text, "cudagraph_capture_failures_total") == s["capture_failures"]
            assert metric(text, "cudagraph_captures_total") == 0
            assert metric(text, "cudagraph_cached_graphs") == 0
            # The fault gone, an explicit prewarm captures again (it ignores the back-off).
            resp = await client.post(
                "/admin/prewarm", headers=ADMIN, json={"shapes": [{"batch_size": 1, "seq_len": 8}]}
            )
            assert resp.status_code == 200 and len(resp.json()["captured"]) == 1, resp.text

    run(scenario())


def test_a_budget_smaller_than_any_graph_serves_eagerly() -> None:
    async def scenario() -> None:
        # 1 byte: no graph fits, every capture is refused, every request still answered.
        async with serving(graph_memory_budget_mb=1 / 2**20, capture_threshold=1) as (_, client):
            for texts in SHAPES:
                await assert_answers(client, texts)
                await settled(client)
            s = await stats(client)
            assert s["capture_failures"] >= len(SHAPES) and s["cached_graphs"] == 0, s
            assert s["memory_bytes"] == 0, s
            text = (await client.get("/metrics")).text
            assert metric(text, "cudagraph_capture_failures_total") >= len(SHAPES)

    run(scenario())


PREWARM = [
    {"batch_size": b, "seq_len": s} for b, s in [(8, 64), (8, 32), (4, 32), (2, 16), (1, 16)]
]


def test_a_prewarm_over_the_budget_captures_what_fits() -> None:
    async def graph_sizes() -> dict[str, int]:
        async with serving() as (_, client):
            resp = await client.post("/admin/prewarm", headers=ADMIN, json={"shapes": PREWARM})
            assert resp.status_code == 200 and not resp.json()["failed"], resp.text
            graphs = (await client.get("/admin/graphs", headers=ADMIN)).json()["graphs"]
            return {json.dumps(g["descriptor"], sort_keys=True): g["memory_bytes"] for g in graphs}

    sizes = run(graph_sizes())
    assert len(sizes) >= 3 and all(v > 0 for v in sizes.values()), sizes
    ordered = sorted(sizes.values(), reverse=True)
    budget = ordered[0] + ordered[1]  # room for the two largest graphs and nothing more

    async def scenario() -> None:
        async with serving(graph_memory_budget_mb=budget / 2**20) as (_, client):
            resp = await client.post("/admin/prewarm", headers=ADMIN, json={"shapes": PREWARM})
            assert resp.status_code == 200, resp.text
            report = resp.json()
            assert report["captured"] and report["failed"], report
            captured = {json.dumps(d, sort_keys=True) for d in report["captured"]}
            failed = {json.dumps(f["descriptor"], sort_keys=True) for f in report["failed"]}
            assert captured | failed == set(sizes) and not captured & failed, report
            assert all("budget" in f["reason"] for f in report["failed"]), report
            graphs = (await client.get("/admin/graphs", headers=ADMIN)).json()
            held = {json.dumps(g["descriptor"], sort_keys=True) for g in graphs["graphs"]}
            assert held == captured, (held, captured)
            assert 0 < graphs["memory_bytes"] <= budget, graphs
            assert graphs["memory_budget_bytes"] == budget
            s = await stats(client)
            assert s["capture_failures"] == len(failed)
            # Everything still serves, captured shapes or not.
            texts = ["x"] * 8
            resp = await client.post("/infer", json={"inputs": texts})
            assert resp.status_code == 200, resp.text

    run(scenario())


# --------------------------------------------------------------------------- disconnects
class Gate:
    """A forward pre-hook that holds the batch on the worker until released."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if is_capturing():
            return
        self.inside.set()
        assert self.release.wait(10), "the test never released the batch"


def test_clients_leaving_mid_batch_cause_no_error_and_no_leak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        async with serving(capture_threshold=1000) as (app, client):
            gate = Gate()
            handle = the_model(app).register_forward_pre_hook(gate)
            try:
                # One request inside the running batch, three queued behind it; all leave.
                inside = asyncio.create_task(client.post("/infer", json={"inputs": ["in batch"]}))
                assert await asyncio.to_thread(gate.inside.wait, 10)
                queued = [
                    asyncio.create_task(client.post("/infer", json={"inputs": ["q1", "q2"]}))
                    for _ in range(3)
                ]
                while app.state.engine.queue_depth < 6:
                    await asyncio.sleep(0.005)
                for task in [inside, *queued]:
                    task.cancel()
                await asyncio.gather(inside, *queued, return_exceptions=True)
                assert app.state.engine.queue_depth == 0  # the queued texts left with them
            finally:
                gate.release.set()
                handle.remove()
            before = await stats(client)
            await assert_answers(client, ["after the disconnects", "all is well"])
            after = await stats(client)
            # The cancelled queued texts never reached the model: one batch for the new request.
            assert (
                after["batches"] - before["batches"] == 1 and after["texts"] - before["texts"] == 2
            )
            assert after["queue_depth"] == 0

    with caplog.at_level(logging.WARNING):
        run(scenario())
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


def _send_and_hang_up(port: int, body: bytes, after_s: float = 0.0) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(after_s)
        # Gone before the answer: RST instead of FIN makes it as abrupt as a crashed client.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _wait_idle(server: SidecarProcess) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        s: dict[str, Any] = httpx.get(server.url + "/admin/stats", headers=ADMIN).json()
        if s["queue_depth"] == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.05)


HANGUPS = 20
TEXTS_PER_HANGUP = 256


@pytest.mark.slow
def test_real_server_clients_hanging_up(tmp_path: Path) -> None:
    env = {
        "SIDECAR_MODEL_PATH": "toy",
        "SIDECAR_DTYPE": "float32",  # compared with the float32 toy reference at 1e-5
        "SIDECAR_ADMIN_TOKEN": TOKEN,
        "SIDECAR_NUM_THREADS": "1",
        "SIDECAR_MAX_BATCH_WAIT_MS": "5",
        "SIDECAR_MAX_QUEUE": str(HANGUPS * TEXTS_PER_HANGUP),  # this is not overload
        "SIDECAR_LOG_LEVEL": "info",
    }
    with SidecarProcess(env, tmp_path / "server.log") as server:
        server.wait_ready()
        metrics_before = httpx.get(server.url + "/metrics").text
        before = httpx.get(server.url + "/admin/stats", headers=ADMIN).json()

        # 1. Clients that queue a lot of work and leave: their queued texts are dropped, not
        # computed for nobody (uvicorn does not cancel the handler of a client that left).
        big = json.dumps({"inputs": [f"abandoned {i} " * 8 for i in range(TEXTS_PER_HANGUP)]})
        threads = [
            threading.Thread(target=_send_and_hang_up, args=(server.port, big.encode(), 0.2))
            for _ in range(HANGUPS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = _wait_idle(server)
        assert after["queue_depth"] == 0, after
        computed = after["texts"] - before["texts"]
        deadline = time.monotonic() + 10
        while True:  # the abandoned handlers answer (into the void) once their work is dropped
            text = httpx.get(server.url + "/metrics").text
            gone = metric(text, "sidecar_requests_total", route="/infer", status="499")
            answered = metric(text, "sidecar_requests_total", route="/infer", status="200")
            answered -= metric(
                metrics_before, "sidecar_requests_total", route="/infer", status="200"
            )
            if gone + answered >= HANGUPS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        print(
            f"\nhang-ups: {HANGUPS} clients x {TEXTS_PER_HANGUP} texts left after 0.2 s: "
            f"{computed} of {HANGUPS * TEXTS_PER_HANGUP} texts computed, {gone:.0f} requests "
            f"dropped (499), {answered:.0f} answered before the client left"
        )
        assert gone + answered == HANGUPS, (gone, answered)
        assert gone >= HANGUPS // 2, "the abandoned requests were served, not dropped"
        assert computed <= HANGUPS * TEXTS_PER_HANGUP // 2, f"{computed} abandoned texts computed"

        # 2. Hang-ups in the middle of steady traffic: the others do not notice.
        body = json.dumps({"inputs": [f"text number {i} " * 6 for i in range(32)]}).encode()

        async def load() -> list[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                hangups = [
                    asyncio.create_task(asyncio.to_thread(_send_and_hang_up, server.port, body))
                    for _ in range(60)
                ]
                normal = [
                    asyncio.create_task(client.post("/infer", json={"inputs": ["steady", "load"]}))
                    for _ in range(30)
                ]
                await asyncio.gather(*hangups)
                return [r.status_code for r in await asyncio.gather(*normal)]

        statuses = run(load())
        assert statuses == [200] * 30
        s = _wait_idle(server)
        assert s["queue_depth"] == 0, s
        texts = ["still", "answering correctly"]
        resp = httpx.post(server.url + "/infer", json={"inputs": texts})
        assert resp.status_code == 200
        torch.testing.assert_close(
            torch.tensor(resp.json()["embeddings"]), reference(texts), atol=1e-5, rtol=0
        )
        log = server.log_text()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
