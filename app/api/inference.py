"""POST /infer and POST /v1/embeddings (OpenAI compatible). Thin: validate, tokenize, queue,
write the answer; batching and the model live in the engine."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from app.api.deps import get_engine
from app.api.responses import RawJSONResponse, embeddings_body, infer_body
from app.api.routing import StrictJSONRoute, bind_body
from app.api.schemas import EmbeddingsResponse, InferResponse, RequestModels
from app.engine.engine import Engine
from app.errors import ApiError, error_responses

EngineDep = Annotated[Engine, Depends(get_engine)]


def build_inference_router(models: RequestModels) -> APIRouter:
    router = APIRouter(route_class=StrictJSONRoute, tags=["inference"])

    async def infer(body: Any, engine: EngineDep) -> Response:
        """Embed texts; the embeddings come back in input order, L2-normalised."""
        engine.check_ready(len(body.inputs))  # refuse before tokenizing when it cannot be served
        token_ids = await engine.tokenize(body.inputs)
        rows = await engine.embed(token_ids)
        encoder = engine.encoder
        tokens = sum(map(len, token_ids))
        return RawJSONResponse(infer_body(encoder.name, encoder.dimensions, rows, tokens))

    async def embeddings(body: Any, engine: EngineDep) -> Response:
        """OpenAI embeddings API: point an OpenAI client's base URL at `<server>/v1`."""
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
        rows = await engine.embed(token_ids)
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
