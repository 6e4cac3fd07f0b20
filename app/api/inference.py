"""POST /infer, and the OpenAI API's POST /v1/embeddings and GET /v1/models. Thin: validate,
then what every embedding route does (app.api.embedding), then write the answer.

The two POST routes run on `DirectBodyRoute` (app.api.routing), which skips FastAPI's dependency
solving on the hot path, so they take the body and the request only and find the engine on the
app."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import engine_of
from app.api.embedding import check_dimensions, embed_texts, gone_response, resized
from app.api.responses import RawJSONResponse, embeddings_body, infer_body
from app.api.routing import DirectBodyRoute, bind_body
from app.api.schemas import EmbeddingsResponse, InferResponse, ModelCard, ModelList, RequestModels
from app.errors import ApiError, error_responses

OWNER = "cudagraph-sidecar"


def build_inference_router(models: RequestModels) -> APIRouter:
    router = APIRouter(tags=["inference"])

    async def infer(body: Any, request: Request) -> Response:
        """Embed texts; the embeddings come back in input order, as the model's pipeline gives
        them (L2-normalised where it ends with Normalize)."""
        engine = engine_of(request)
        done = await embed_texts(request, engine, body.inputs, body.prompt_name)
        if done is None:
            return gone_response()
        encoder = engine.encoder
        return RawJSONResponse(infer_body(encoder.name, encoder.dimensions, done.rows, done.tokens))

    async def embeddings(body: Any, request: Request) -> Response:
        """OpenAI embeddings API: point an OpenAI client's base URL at `<server>/v1`.
        `dimensions` below the model's truncates (renormalised when the model normalises)."""
        engine = engine_of(request)
        texts = [body.input] if isinstance(body.input, str) else body.input
        check_dimensions(engine, body.dimensions)
        done = await embed_texts(request, engine, texts, body.prompt_name)
        if done is None:
            return gone_response()
        encoder = engine.encoder
        smaller = body.dimensions if body.dimensions != encoder.dimensions else None
        rows = resized(done.rows, smaller, smaller is not None and encoder.normalized)
        return RawJSONResponse(
            embeddings_body(encoder.name, rows, done.tokens, body.encoding_format)
        )

    router.add_api_route(
        "/infer",
        bind_body(infer, models.infer),
        methods=["POST"],
        route_class_override=DirectBodyRoute,
        response_model=None,
        responses={200: {"model": InferResponse}, **error_responses(400, 413, 422, 500, 503)},
        summary="Embed texts",
    )
    router.add_api_route(
        "/v1/embeddings",
        bind_body(embeddings, models.embeddings),
        methods=["POST"],
        route_class_override=DirectBodyRoute,
        response_model=None,
        responses={200: {"model": EmbeddingsResponse}, **error_responses(400, 413, 422, 500, 503)},
        summary="Create embeddings (OpenAI compatible)",
    )

    # OpenAI's model objects carry a creation time; the server's start is the honest one it has.
    started = int(time.time())

    def card(request: Request) -> ModelCard:
        return ModelCard(id=engine_of(request).encoder.name, created=started, owned_by=OWNER)

    @router.get(
        "/v1/models",
        response_model=ModelList,
        responses=error_responses(503),
        summary="List models (OpenAI compatible)",
    )
    async def list_models(request: Request) -> ModelList:
        """The one model this server serves, as OpenAI's API lists models."""
        return ModelList(data=[card(request)])

    @router.get(
        "/v1/models/{model:path}",
        response_model=ModelCard,
        responses=error_responses(404, 503),
        summary="Retrieve a model (OpenAI compatible)",
    )
    async def retrieve_model(model: str, request: Request) -> ModelCard:
        """The served model by its id; any other id is 404 `model_not_found`."""
        served = card(request)
        if model != served.id:
            raise ApiError(
                404,
                "model_not_found",
                f"model {model!r} is not served here (this serves {served.id!r})",
            )
        return served

    return router
