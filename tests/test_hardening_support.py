"""Shared helpers of the hardening tests (no tests here): the in-process app with its lifespan,
Prometheus text parsing, the model's unbatched reference answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import torch
from fastapi import FastAPI

from app.main import create_app
from app.settings import load_settings
from models import make_toy_encoder

T = TypeVar("T")

TOKEN = "hardening-admin-token-7f3c"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def serving(**overrides: Any) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The real app (toy model unless overridden) with its lifespan, an httpx client over ASGI,
    ready to serve. 5xx answers come back as responses, not raised."""
    overrides.setdefault("model_path", "toy")
    overrides.setdefault("admin_token", TOKEN)
    # float32: answers are compared with the float32 toy reference at 1e-5 (auto would pick
    # bfloat16 on a CPU with native bfloat16; test_service_api covers that default)
    overrides.setdefault("dtype", "float32")
    overrides.setdefault("graph_mode", "FULL")  # the graph paths on the CPU too
    app = create_app(load_settings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            deadline = time.monotonic() + 60
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "never ready"
                await asyncio.sleep(0.02)
            yield app, client


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def the_model(app: FastAPI) -> torch.nn.Module:
    """The SentenceModel the engine loaded (the one its runner and graphs call)."""
    model: torch.nn.Module = app.state.engine.encoder.model
    return model


def reference(texts: list[str]) -> torch.Tensor:
    """The toy model's plain eager answer, one text at a time (no batching, no graphs)."""
    enc = make_toy_encoder()
    return torch.cat([enc.embed([t]) for t in texts])


async def assert_answers(client: httpx.AsyncClient, texts: list[str]) -> None:
    """POST /infer `texts`: 200, with the toy model's plain eager answer (within 1e-5)."""
    resp = await client.post("/infer", json={"inputs": texts})
    assert resp.status_code == 200, resp.text
    got = torch.tensor(resp.json()["embeddings"])
    torch.testing.assert_close(got, reference(texts), atol=1e-5, rtol=0)


def assert_envelope(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and 0 < len(message) < 2000, message
    return str(message)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        sname, _, rest = series.partition("{")
        if sname != name:
            continue
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if got == want:
            return float(value)
    return 0.0


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    resp = await client.get("/admin/stats", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    out: dict[str, Any] = resp.json()
    return out


async def settled(client: httpx.AsyncClient) -> dict[str, Any]:
    """The stats once the deferred captures have run in the engine's idle gaps."""
    deadline = time.monotonic() + 30
    while (current := await stats(client))["pending_captures"]:
        assert time.monotonic() < deadline, "deferred captures never ran"
        await asyncio.sleep(0.005)
    return current
