"""The app's life over ASGI with an explicit lifespan: readiness, batching, overload, deadlines,
graceful drain and the hot-shape profile surviving a restart. Real models, nothing mocked."""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi import FastAPI

from app.engine.engine import Engine, EngineState
from app.main import create_app
from app.settings import load_settings

TOKEN = "lifecycle-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan running, and an HTTP client talking to it in-process."""
    # float32: answers are compared with the float32 toy reference at 1e-5 (auto would pick
    # bfloat16 on a CPU with native bfloat16; test_service_api covers that default)
    overrides.setdefault("dtype", "float32")
    overrides.setdefault("graph_mode", "FULL")  # graphs on the CPU too (auto would pick NONE)
    app = create_app(load_settings(admin_token=TOKEN, **overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            yield app, client


def engine_of(app: FastAPI) -> Engine:
    engine: Engine = app.state.engine
    return engine


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())  # type: ignore[arg-type]


def sentence(i: int) -> str:
    words = "graph batch replay capture token memory shape latency server model".split()
    return " ".join(words[(i + k) % len(words)] for k in range(3 + i % 17))


# ---------------------------------------------------------------------------- readiness
def test_not_ready_until_startup_prewarm_is_captured() -> None:
    async def main() -> None:
        # MiniLM with three start-up shapes: seconds of captures on this CPU.
        async with serving(prewarm_shapes="8x64,4x64,2x32") as (app, client):
            engine = engine_of(app)
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            err = ready.json()["error"]
            assert err["code"] == "not_ready" and "warming up" in err["message"]
            assert ready.headers["retry-after"] == "1"
            assert (await client.get("/healthz")).status_code == 200  # alive all along
            refused = await client.post("/infer", json={"inputs": ["too early"]})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
            assert "retry-after" in refused.headers

            await engine.wait_ready()
            ready = await client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["prewarm"] == {"done": 3, "total": 3}
            graphs = (await client.get("/admin/graphs", headers=AUTH)).json()
            cached = {
                (g["descriptor"]["num_reqs"], g["descriptor"]["num_tokens"])
                for g in graphs["graphs"]
            }
            assert cached == {(8, 8 * 64), (4, 4 * 64), (2, 2 * 32)}
            assert (await client.post("/infer", json={"inputs": ["now"]})).status_code == 200

    run(main)


def test_a_failed_startup_prewarm_is_served_eagerly_and_shown() -> None:
    """Ready once the start-up prewarm has run, whatever it captured: a shape that did not fit
    the memory budget is answered eagerly, and the failure is in /admin/stats and a metric."""

    async def main() -> None:
        async with serving(
            model_path="toy", prewarm_shapes="8x64", graph_memory_budget_mb=1 / 2**20
        ) as (app, client):
            await engine_of(app).wait_ready()
            assert (await client.get("/readyz")).status_code == 200
            stats = (await client.get("/admin/stats", headers=AUTH)).json()
            startup = stats["startup_prewarm"]
            assert startup["captured"] == [] and len(startup["failed"]) == 1
            assert "memory budget" in startup["failed"][0]["reason"]
            assert stats["capture_failures"] == 1 and stats["cached_graphs"] == 0
            metrics = (await client.get("/metrics")).text
            assert _sample(metrics, "cudagraph_capture_failures_total") == 1
            resp = await client.post("/infer", json={"inputs": ["x" * 60] * 8})
            assert resp.status_code == 200

    run(main)


def test_a_threshold_crossing_is_answered_eagerly_and_captured_in_the_next_gap() -> None:
    async def main() -> None:
        async with serving(model_path="toy", capture_threshold=2, idle_prewarm_top_k=0) as (
            app,
            client,
        ):
            engine = engine_of(app)
            await engine.wait_ready()
            graphs = engine.graphs
            assert graphs is not None

            async def stats() -> dict[str, Any]:
                return (await client.get("/admin/stats", headers=AUTH)).json()  # type: ignore[no-any-return]

            body = {"inputs": ["crossing"]}
            ref = (await client.post("/infer", json=body)).json()["embeddings"]
            crossing = await client.post("/infer", json=body)  # 2nd lookup: the threshold
            assert crossing.json()["embeddings"] == ref
            # Answered eagerly: no request paid for a capture.
            assert (await stats())["eager_runs"] == 2
            while graphs.pending_captures():
                await asyncio.sleep(0.005)
            after_gap = await stats()
            assert (after_gap["captures"], after_gap["pending_captures"]) == (1, 0)
            replayed = await client.post("/infer", json=body)
            torch.testing.assert_close(
                torch.tensor(replayed.json()["embeddings"]), torch.tensor(ref), atol=1e-5, rtol=0
            )
            final = await stats()
            assert (final["hits"], final["misses"], final["eager_runs"]) == (1, 2, 2)

    run(main)


# ---------------------------------------------------------------------------- batching
def test_startup_heap_is_frozen_while_serving_and_given_back_on_stop() -> None:
    """Ready: what start-up allocated is out of the collector's reach (gc.freeze), and stays so
    across a capture while serving; stopped: given back."""
    gc.unfreeze()

    async def main() -> None:
        # No idle prediction: a capture still running would hold the collector disabled.
        async with serving(
            model_path="toy", graph_mode="FULL", capture_threshold=1, idle_prewarm_top_k=0
        ) as (app, c):
            await engine_of(app).wait_ready()
            frozen = gc.get_freeze_count()
            assert frozen > 1000, frozen
            resp = await c.post("/infer", json={"inputs": ["a new shape, captured now"]})
            assert resp.status_code == 200
            graphs = engine_of(app).graphs
            assert graphs is not None
            while graphs.pending_captures():  # captured in the idle gap after the answer
                await asyncio.sleep(0.005)
            assert graphs.snapshot().captures >= 1
            assert gc.get_freeze_count() >= frozen and gc.isenabled()
        assert gc.get_freeze_count() == 0

    run(main)


def test_concurrent_requests_share_model_calls_and_match_unbatched() -> None:
    async def main() -> None:
        # Graphs are not the point here: a high capture threshold keeps it quick (eager runs).
        async with serving(max_batch_size=8, capture_threshold=1000) as (app, client):
            engine = engine_of(app)
            await engine.wait_ready()
            texts = [sentence(i) for i in range(24)]
            solo = []
            for t in texts:  # one at a time: each is its own model call
                resp = await client.post("/infer", json={"inputs": [t]})
                solo.append(resp.json()["embeddings"][0])
            assert engine.batches == 24

            resps = await asyncio.gather(
                *(client.post("/infer", json={"inputs": [t]}) for t in texts)
            )
            calls = engine.batches - 24
            assert all(r.status_code == 200 for r in resps)
            # 24 simultaneous requests, batches of up to 8: a handful of model calls.
            assert 3 <= calls <= 6, calls
            together = torch.tensor([r.json()["embeddings"][0] for r in resps])
            torch.testing.assert_close(together, torch.tensor(solo), atol=2e-5, rtol=1e-4)
            metrics = (await client.get("/metrics")).text
            assert _sample(metrics, "sidecar_batch_size_count") == engine.batches
            assert _sample(metrics, "sidecar_batch_size_sum") == 48

    run(main)


@pytest.mark.parametrize("mode", ["NONE", "PIECEWISE", "FULL"])
def test_every_graph_mode_serves_the_same_embeddings(mode: str) -> None:
    async def main() -> None:
        async with serving(model_path="toy", graph_mode=mode, capture_threshold=1) as (app, client):
            await engine_of(app).wait_ready()
            texts = [sentence(i) for i in range(6)]
            first = (await client.post("/infer", json={"inputs": texts})).json()
            second = (await client.post("/infer", json={"inputs": texts})).json()  # replays
            ref = torch.tensor(first["embeddings"])
            torch.testing.assert_close(torch.tensor(second["embeddings"]), ref)
            from models import make_toy_encoder

            eager = make_toy_encoder().embed(texts)
            torch.testing.assert_close(ref, eager, atol=1e-5, rtol=1e-4)
            stats = (await client.get("/admin/stats", headers=AUTH)).json()
            assert stats["mode"] == mode
            if mode == "NONE":
                assert stats["captures"] == 0 and stats["cached_graphs"] == 0
            else:
                assert stats["captures"] >= 1 and stats["hits"] >= 1

    run(main)


# ---------------------------------------------------------------------------- overload
def test_full_queue_answers_503_with_retry_after() -> None:
    async def main() -> None:
        settings = dict(model_path="toy", max_queue=4, max_inputs_per_request=4, max_batch_size=1)
        async with serving(**settings) as (app, client):
            await engine_of(app).wait_ready()
            body = {"inputs": ["one", "two", "three", "four"]}
            resps = await asyncio.gather(*(client.post("/infer", json=body) for _ in range(4)))
            codes = sorted(r.status_code for r in resps)
            assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
            for r in resps:
                if r.status_code == 503:
                    assert r.json()["error"]["code"] == "queue_full"
                    assert r.headers["retry-after"] == "1"
                else:
                    assert len(r.json()["embeddings"]) == 4
            metrics = (await client.get("/metrics")).text
            rejected = _sample(metrics, 'sidecar_rejected_total{reason="queue_full"}')
            assert rejected == codes.count(503)

    run(main)


def test_deadline_answers_503_timeout() -> None:
    async def main() -> None:
        async with serving(model_path="toy", request_timeout_s=1e-6) as (app, client):
            await engine_of(app).wait_ready()
            resp = await client.post("/infer", json={"inputs": ["late"]})
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "timeout"
            assert resp.headers["retry-after"] == "1"
            metrics = (await client.get("/metrics")).text
            assert _sample(metrics, 'sidecar_rejected_total{reason="timeout"}') == 1
            assert _sample(metrics, 'sidecar_rejected_total{reason="queue_full"}') == 0

    run(main)


def _sample(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in metrics")


# ---------------------------------------------------------------------------- drain
def test_shutdown_finishes_queued_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        app = create_app(load_settings(max_batch_size=8))
        engine = engine_of(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            async with app.router.lifespan_context(app):
                await engine.wait_ready()
                texts = [sentence(i) * 4 for i in range(40)]
                tasks = [
                    asyncio.create_task(client.post("/infer", json={"inputs": [t]})) for t in texts
                ]
                while engine.queue_depth < 20:  # wait until most are queued behind a batch
                    await asyncio.sleep(0.001)
                engine.begin_drain()  # what SIGTERM does first
                assert (await client.get("/readyz")).status_code == 503
            # The lifespan has exited: every queued request was answered.
            assert engine.state is EngineState.STOPPED
            results = await asyncio.gather(*tasks)
            assert [r.status_code for r in results] == [200] * 40
            late = await client.post("/infer", json={"inputs": ["after shutdown"]})
            assert late.status_code == 503 and late.json()["error"]["code"] == "draining"

    run(main)


# ---------------------------------------------------------------------------- profile
def test_hot_shape_profile_survives_a_restart(tmp_path: Path) -> None:
    profile = tmp_path / "state" / "hot-shapes.json"

    async def first_life() -> list[dict[str, Any]]:
        async with serving(model_path="toy", profile_path=str(profile)) as (app, client):
            await engine_of(app).wait_ready()
            for _ in range(5):
                await client.post("/infer", json={"inputs": ["abc"]})  # 1 x 16 tokens
            for _ in range(3):
                await client.post("/infer", json={"inputs": ["a b c d e f g h i j k l m n o p"]})
            hot: list[dict[str, Any]] = (
                await client.get("/admin/hot-shapes", headers=AUTH)
            ).json()["hot_shapes"]
            assert not profile.exists()  # written at shutdown
        return hot

    async def second_life(hot_before: list[dict[str, Any]]) -> None:
        async with serving(model_path="toy", profile_path=str(profile)) as (app, client):
            engine = engine_of(app)
            await engine.wait_ready()
            hot = (await client.get("/admin/hot-shapes", headers=AUTH)).json()["hot_shapes"]
            strip = [{k: h[k] for k in ("rank", "descriptor", "count")} for h in hot]
            assert strip == [{k: h[k] for k in ("rank", "descriptor", "count")} for h in hot_before]
            # Its top shapes were captured before ready: the first request is a replay.
            cached = [
                g["descriptor"]
                for g in (await client.get("/admin/graphs", headers=AUTH)).json()["graphs"]
            ]
            for h in hot_before:
                assert h["descriptor"] in cached
            assert engine.prewarm_total >= 2
            before = (await client.get("/admin/stats", headers=AUTH)).json()
            await client.post("/infer", json={"inputs": ["xyz"]})
            after = (await client.get("/admin/stats", headers=AUTH)).json()
            assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]

    hot_before = asyncio.run(first_life())
    assert [h["count"] for h in hot_before] == [5, 3]
    saved = json.loads(profile.read_text())
    assert saved["mode"] == "FULL"
    assert sorted(s["count"] for s in saved["shapes"]) == [3, 5]
    asyncio.run(second_life(hot_before))
    # And the second life saved it again, counts carried over (+1 for "xyz").
    again = json.loads(profile.read_text())
    assert sorted(s["count"] for s in again["shapes"]) == [3, 6]


def test_unreadable_profile_does_not_prevent_start(tmp_path: Path) -> None:
    profile = tmp_path / "hot.json"
    profile.write_text("{not json")

    async def main() -> None:
        async with serving(model_path="toy", profile_path=str(profile)) as (app, client):
            await engine_of(app).wait_ready()
            assert (await client.get("/readyz")).status_code == 200

    run(main)
    assert json.loads(profile.read_text())["format"] == "cudagraph-hot-shapes"  # replaced


def test_bad_prewarm_shape_refuses_to_start() -> None:
    async def main() -> None:
        app = create_app(load_settings(model_path="toy", prewarm_shapes="1x500"))
        with pytest.raises(ValueError, match="SIDECAR_PREWARM_SHAPES"):
            async with app.router.lifespan_context(app):
                pass

    run(main)


def test_a_failing_model_call_answers_500_for_its_batch_only() -> None:
    async def main() -> None:
        async with serving(model_path="toy", capture_threshold=1000) as (app, client):
            engine = engine_of(app)
            await engine.wait_ready()
            failures: list[int] = []

            def fail_once(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
                if not failures:  # a real exception inside the forward, on the worker thread
                    failures.append(1)
                    raise RuntimeError("injected: CUDA error: an illegal memory access")

            handle = engine.encoder.model.register_forward_pre_hook(fail_once)
            try:
                bad = await client.post("/infer", json={"inputs": ["first", "batch"]})
                good = await client.post("/infer", json={"inputs": ["second"]})
            finally:
                handle.remove()
            assert bad.status_code == 500
            assert bad.json()["error"]["code"] == "inference_failed"
            assert "illegal memory access" not in bad.text  # internals stay in the log
            assert good.status_code == 200 and len(good.json()["embeddings"]) == 1
            assert (await client.get("/readyz")).status_code == 200

    run(main)
