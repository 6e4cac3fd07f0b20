"""POST /infer and POST /v1/embeddings (OpenAI compatible). Thin: validate, tokenize, queue,
write the answer; batching and the model live in the engine.

Both run on `DirectBodyRoute` (app.api.routing), which skips FastAPI's dependency solving on
the hot path, so they take the body and the request only and find the engine on the app."""

from __future__ import annotations

import asyncio
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import engine_of
from app.api.responses import RawJSONResponse, embeddings_body, infer_body
from app.api.routing import DirectBodyRoute, bind_body
from app.api.schemas import EmbeddingsResponse, InferResponse, RequestModels
from app.engine.engine import Engine
from app.errors import ApiError, error_response, error_responses

# nginx's "client closed request": counted in sidecar_requests_total, never received by anyone.
CLIENT_GONE = 499


async def _client_gone(request: Request) -> None:
    """Return once the client has disconnected. The body is read by now, so the server's next
    ASGI message is http.disconnect (uvicorn sends it when the connection drops)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def embed_while_connected(
    request: Request, engine: Engine, token_ids: list[list[int]]
) -> list[torch.Tensor] | None:
    """`engine.embed(token_ids)`, abandoned as soon as the client disconnects (None then).

    uvicorn does not cancel a handler whose client went away: without this, a gone client's
    texts stay queued and are computed for nobody, holding queue room and worker time that live
    clients need (clients that time out and retry would fill the queue with dead work).
    Cancelling the wait makes the batcher drop the texts still queued; a batch already running
    finishes normally for the other requests in it.
    """
    work = asyncio.ensure_future(engine.embed(token_ids))
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler cancelled (server shutdown, in-process client)
        work.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if work.done():
        return work.result()  # the answer, or the batcher's refusal/failure (raised)
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    return None


def _gone_response() -> Response:
    return error_response(
        CLIENT_GONE, "client_closed_request", "the client disconnected before the answer"
    )


def build_inference_router(models: RequestModels) -> APIRouter:
    router = APIRouter(route_class=DirectBodyRoute, tags=["inference"])

    async def infer(body: Any, request: Request) -> Response:
        """Embed texts; the embeddings come back in input order, L2-normalised."""
        engine = engine_of(request)
        engine.check_ready(len(body.inputs))  # refuse before tokenizing when it cannot be served
        token_ids = await engine.tokenize(body.inputs)
        rows = await embed_while_connected(request, engine, token_ids)
        if rows is None:
            return _gone_response()
        encoder = engine.encoder
        tokens = sum(map(len, token_ids))
        return RawJSONResponse(infer_body(encoder.name, encoder.dimensions, rows, tokens))

    async def embeddings(body: Any, request: Request) -> Response:
        """OpenAI embeddings API: point an OpenAI client's base URL at `<server>/v1`."""
        engine = engine_of(request)
        texts = [body.input] if isinstance(body.input, str) else body.input
        engine.check_ready(len(texts))
        encoder = engine.encoder
        if body.dimensions is not None and body.dimensions != encoder.dimensions:
            raise ApiError(
                400,
                "unsupported_dimensions",
                f"this model returns {encoder.dimensions} dimensions; "
                f"`dimensions` must be {encoder.dimensions} or omitted",
            )
        token_ids = await engine.tokenize(texts)
        rows = await embed_while_connected(request, engine, token_ids)
        if rows is None:
            return _gone_response()
        tokens = sum(map(len, token_ids))
        return RawJSONResponse(embeddings_body(encoder.name, rows, tokens, body.encoding_format))

    router.add_api_route(
        "/infer",
        bind_body(infer, models.infer),
        methods=["POST"],
        response_model=None,
        responses={200: {"model": InferResponse}, **error_responses(413, 422, 500, 503)},
        summary="Embed texts",
    )
    router.add_api_route(
        "/v1/embeddings",
        bind_body(embeddings, models.embeddings),
        methods=["POST"],
        response_model=None,
        responses={200: {"model": EmbeddingsResponse}, **error_responses(400, 413, 422, 500, 503)},
        summary="Create embeddings (OpenAI compatible)",
    )
    return router
