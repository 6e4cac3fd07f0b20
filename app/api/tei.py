"""text-embeddings-inference's routes, so its clients (huggingface_hub's InferenceClient and the
LangChain / LlamaIndex integrations built on it) work by base URL: POST /embed (and POST /,
which TEI serves the same way) and GET /info. Same batching, graphs and metrics as /infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import engine_of
from app.api.embedding import check_dimensions, embed_texts, gone_response, resized
from app.api.responses import RawJSONResponse, float_rows
from app.api.routing import DirectBodyRoute, bind_body
from app.api.schemas import InfoResponse, RequestModels
from app.errors import error_responses

VERSION = "0.1.0"


def _model_type(task: str, pooling: str, labels: tuple[str, ...]) -> dict[str, Any]:
    """TEI's model_type: {"embedding": {"pooling"}}, or {"reranker" | "classifier": labels}."""
    if task == "embed":
        # TEI's spelling where it has the mode; sentence-transformers' for the others.
        return {"embedding": {"pooling": "last_token" if pooling == "lasttoken" else pooling}}
    heads = {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    return {"reranker" if task == "rerank" else "classifier": heads}


def build_tei_router(models: RequestModels) -> APIRouter:
    router = APIRouter(tags=["text-embeddings-inference"])

    async def embed(body: Any, request: Request) -> Response:
        """A list of embeddings, one per input. `normalize` (default true) L2-normalises them;
        `dimensions` keeps the first values (Matryoshka)."""
        engine = engine_of(request)
        texts = [body.inputs] if isinstance(body.inputs, str) else body.inputs
        check_dimensions(engine, body.dimensions)
        truncate = body.truncate is not False  # unset: truncated, as with --auto-truncate
        done = await embed_texts(request, engine, texts, body.prompt_name, truncate)
        if done is None:
            return gone_response()
        rows = resized(done.rows, body.dimensions, body.normalize)
        return RawJSONResponse(b"[" + b",".join(float_rows(rows)) + b"]")

    for path in ("/embed", "/"):
        router.add_api_route(
            path,
            bind_body(embed, models.embed),
            methods=["POST"],
            route_class_override=DirectBodyRoute,
            response_model=None,
            responses={
                200: {"model": list[list[float]]},
                **error_responses(400, 413, 422, 500, 503),
            },
            summary="Embed texts (text-embeddings-inference compatible)",
            include_in_schema=path != "/",
        )

    @router.get(
        "/info",
        response_model=InfoResponse,
        response_model_exclude_unset=True,  # model_type holds only the served task's key
        responses=error_responses(503),
        summary="Model info",
    )
    async def info(request: Request) -> dict[str, Any]:
        """What is served: text-embeddings-inference's fields, plus the family, pooling,
        dimensions, device and graph mode."""
        engine = engine_of(request)
        encoder = engine.encoder
        settings = request.app.state.settings
        return {
            "model_id": encoder.name,
            "model_sha": settings.model_revision,
            "model_dtype": str(encoder.dtype).removeprefix("torch."),
            "model_type": _model_type(encoder.task, encoder.pooling, encoder.labels),
            "max_concurrent_requests": settings.max_queue,
            "max_input_length": encoder.max_seq_len,
            "max_batch_tokens": settings.max_batch_tokens,
            "max_client_batch_size": settings.max_inputs_per_request,
            "tokenization_workers": request.app.state.front_ends,
            "version": VERSION,
            "family": encoder.family,
            "dimensions": encoder.dimensions,
            "normalized": encoder.normalized,
            "prompts": sorted(encoder.prompts),
            "default_prompt_name": encoder.default_prompt_name,
            "device": str(encoder.device),
            "graph_mode": engine.mode_name,
        }

    return router
