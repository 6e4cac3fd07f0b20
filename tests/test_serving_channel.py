"""The engine server and a front end's client in one event loop, over a real zmq ipc socket:
what crosses, and how refusals and failures come back as the in-process engine's own."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from app.engine.batcher import QueueFull, RequestTimedOut
from app.engine.engine import Engine, EngineState
from app.engine.operations import InvalidOperation
from app.metrics import EngineMetrics, FrontEndMetrics
from app.serving.client import EngineClient, EngineUnavailable
from app.serving.engine_server import EngineServer
from app.settings import load_settings


def _run(
    tmp_path: Path,
    body: Callable[[EngineClient, Engine], Awaitable[Any]],
    answer_timeout_s: float = 60.0,
    **settings: Any,
) -> Any:
    """Start an engine server and a client at an ipc address under `tmp_path`, run `body`."""
    config = load_settings(model="toy", device="cpu", **settings).engine_config()

    async def main() -> Any:
        engine = Engine(config, observer=EngineMetrics(CollectorRegistry()))
        server = EngineServer(engine, EngineMetrics(CollectorRegistry()), f"ipc://{tmp_path}/e")
        stop = asyncio.Event()
        serving = asyncio.create_task(server.serve(stop))
        alive_r, alive_w = os.pipe()
        metrics = FrontEndMetrics(CollectorRegistry())
        client = EngineClient(f"ipc://{tmp_path}/e", metrics, alive_r, answer_timeout_s)
        try:
            await client.start()
            await engine.wait_ready()
            while client.state is not EngineState.READY:
                await asyncio.sleep(0.01)
            return await body(client, engine)
        finally:
            await client.stop()
            stop.set()
            await serving
            os.close(alive_w)
            os.close(alive_r)

    return asyncio.run(main())


def test_rows_cross_as_the_engine_computed_them(tmp_path: Path) -> None:
    async def body(client: EngineClient, engine: Engine) -> None:
        texts = ["a first text", "and a second, longer one"]
        ids = client.encoder.tokenizer.encode(texts)  # rebuilt from the engine's description
        assert ids == engine.encoder.tokenizer.encode(texts)
        remote = await client.embed(ids)
        local = await engine.embed(ids)
        assert remote.dtype == np.float32 and remote.shape == (2, client.encoder.dimensions)
        np.testing.assert_array_equal(remote, local)
        assert (await client.embed([])).shape == (0, client.encoder.dimensions)
        assert client.encoder.name == engine.encoder.name
        assert client.mode_name == engine.mode_name

    _run(tmp_path, body)


def test_refusals_and_admin_errors_come_back_as_the_same_exceptions(tmp_path: Path) -> None:
    async def body(client: EngineClient, engine: Engine) -> None:
        with pytest.raises(QueueFull):
            await client.embed(
                client.encoder.tokenizer.encode(["x"]) * 9
            )  # more than the queue holds
        with pytest.raises(InvalidOperation) as invalid:
            await client.operate("prewarm", {"shapes": [[10**6, 16]]})
        assert invalid.value.code == "invalid_shape"
        with pytest.raises(InvalidOperation, match="no operation"):
            await client.operate("no-such-thing", {})
        stats = await client.operate("stats", {})
        assert stats["texts"] == 0 and stats == await engine.operate("stats", {})

    _run(tmp_path, body, max_queue=8, max_inputs_per_request=8)


def test_a_cancelled_request_leaves_the_engine_queue(tmp_path: Path) -> None:
    async def body(client: EngineClient, engine: Engine) -> None:
        # A slow batch holds the worker; a request queued behind it is then walked away from.
        handle = engine.encoder.model.register_forward_pre_hook(lambda *_: time.sleep(0.3))
        try:
            ids = client.encoder.tokenizer.encode(["one text"])
            first = asyncio.create_task(client.embed(ids))
            while engine.batches == 0:
                await asyncio.sleep(0.001)
            waiting = asyncio.create_task(client.embed(ids * 4))
            while engine.queue_depth < 4:
                await asyncio.sleep(0.001)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            while engine.queue_depth:  # the Cancel message reaches the engine
                await asyncio.sleep(0.001)
            assert (await first).shape == (1, client.encoder.dimensions)
            assert engine.texts == 1  # the cancelled texts never ran
        finally:
            handle.remove()

    _run(tmp_path, body)


def test_a_stopped_client_refuses_as_unavailable(tmp_path: Path) -> None:
    async def body(client: EngineClient, engine: Engine) -> None:
        await client.stop()
        with pytest.raises(EngineUnavailable):
            await client.embed([[0, 1]])

    _run(tmp_path, body)


def test_an_engine_that_does_not_answer_is_a_timeout_not_a_hang(tmp_path: Path) -> None:
    async def body(client: EngineClient, engine: Engine) -> None:
        handle = engine.encoder.model.register_forward_pre_hook(lambda *_: time.sleep(0.5))
        try:
            with pytest.raises(RequestTimedOut, match="did not answer within 0.1 s"):
                await client.embed(client.encoder.tokenizer.encode(["slow"]))
        finally:
            handle.remove()

    _run(tmp_path, body, answer_timeout_s=0.1)


def test_admin_calls_the_engine_does_not_answer_time_out_but_a_prewarm_waits(
    tmp_path: Path,
) -> None:
    async def body(client: EngineClient, engine: Engine) -> None:
        # A forward that holds the worker for 0.6 s: what queues behind it waits that long.
        handle = engine.encoder.model.register_forward_pre_hook(lambda *_: time.sleep(0.6))
        try:
            held = asyncio.ensure_future(client.embed(client.encoder.tokenizer.encode(["x"])))
            await asyncio.sleep(0.05)
            with pytest.raises(RequestTimedOut, match="did not answer within 0.2 s"):
                await client.operate("clear_graphs", {})
            assert "hits" in await client.operate("stats", {})  # not on the worker: answered
            t0 = time.monotonic()
            report = await client.operate("prewarm", {})  # on the worker, after the forward
            assert time.monotonic() - t0 > 0.2 and report["failed"] == []
            with pytest.raises(RequestTimedOut):
                await held
        finally:
            handle.remove()

    _run(tmp_path, body, answer_timeout_s=0.2)
