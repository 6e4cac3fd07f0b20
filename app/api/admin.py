"""Admin API (bearer token): prewarm shapes, inspect and empty the graph cache, read stats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.api.auth import require_admin
from app.api.deps import get_engine
from app.api.routing import AdminRoute, bind_body
from app.api.schemas import (
    ClearResponse,
    GraphsResponse,
    HotShapesResponse,
    PrewarmResponse,
    RequestModels,
    StatsResponse,
)
from app.cudagraph import BatchDescriptor, GraphCache
from app.engine.engine import Engine, NotReady
from app.errors import ApiError, error_responses

EngineDep = Annotated[Engine, Depends(get_engine)]
MAX_TOP_K = 1000


def _view(engine: Engine) -> GraphCache:
    view = engine.graphs
    if view is None:
        raise NotReady("the model is not loaded yet")
    return view


def _descriptors(engine: Engine, body: Any) -> list[BatchDescriptor]:
    """What a prewarm request asks for, checked against the ladders (422 when impossible)."""
    if body is None or (body.shapes is None and body.descriptors is None and body.top_k is None):
        return engine.ladder_descriptors()
    if body.top_k is not None:
        return _view(engine).predict_shapes(body.top_k)
    if body.shapes is not None:
        out: list[BatchDescriptor] = []
        for i, shape in enumerate(body.shapes):
            try:
                out.append(engine.descriptor_for_shape(shape.batch_size, shape.seq_len))
            except ValueError as exc:
                raise ApiError(422, "invalid_shape", f"shapes.{i}: {exc}") from None
        return out
    cache = _view(engine)
    ladder = {cache.key_for(d) for d in engine.ladder_descriptors()}
    out = []
    for i, d in enumerate(body.descriptors):
        try:
            descriptor = BatchDescriptor(d.num_tokens, d.num_reqs, d.is_uniform_decode)
        except ValueError as exc:
            raise ApiError(422, "invalid_descriptor", f"descriptors.{i}: {exc}") from None
        # Keyed as lookups are: PIECEWISE only looks at the token count.
        if cache.key_for(descriptor) not in ladder:
            raise ApiError(
                422,
                "invalid_descriptor",
                f"descriptors.{i}: {descriptor.label()} is not a shape of the configured "
                f"ladder ({len(ladder)} shapes; see POST /admin/prewarm with shapes)",
            )
        out.append(descriptor)
    return out


def build_admin_router(models: RequestModels) -> APIRouter:
    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        route_class=AdminRoute,
        dependencies=[Depends(require_admin)],
        responses=error_responses(401, 403, 503),
    )

    async def prewarm(engine: EngineDep, body: Any = None) -> dict[str, Any]:
        """Capture graphs now: `shapes` (batch_size x seq_len, padded to the ladders),
        `descriptors` (exact ladder keys), `top_k` (the predicted hot shapes), or an empty body
        for the whole configured ladder. Runs on the worker between batches."""
        descriptors = _descriptors(engine, body)
        report = await engine.prewarm(descriptors)
        return report.to_dict()

    router.add_api_route(
        "/prewarm",
        bind_body(prewarm, models.prewarm | None),
        methods=["POST"],
        response_model=PrewarmResponse,
        responses=error_responses(413, 422),
        summary="Prewarm graph shapes",
    )

    @router.get("/graphs", response_model=GraphsResponse, summary="Cached graphs")
    async def graphs(engine: EngineDep) -> dict[str, Any]:
        view = _view(engine)
        entries = view.cached_entries()
        config = view.config
        return {
            "mode": view.mode.name,
            "max_cached_graphs": config.max_cached_graphs,
            "memory_budget_bytes": config.memory_budget_bytes,
            "capture_threshold": config.capture_threshold,
            "cached_graphs": len(entries),
            "memory_bytes": sum(e.memory_bytes for e in entries),
            "graphs": [e.to_dict() for e in entries],
        }

    @router.delete(
        "/graphs",
        response_model=ClearResponse,
        responses=error_responses(413),  # a DELETE may carry a body; the size limit applies
        summary="Empty the graph cache",
    )
    async def clear_graphs(engine: EngineDep) -> dict[str, int]:
        _view(engine)
        return {"cleared": await engine.clear_graphs()}

    @router.get(
        "/hot-shapes",
        response_model=HotShapesResponse,
        responses=error_responses(422),
        summary="Most requested shapes",
    )
    async def hot_shapes(
        engine: EngineDep, top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 10
    ) -> dict[str, Any]:
        shapes = _view(engine).get_hot_shapes(top_k)
        return {"hot_shapes": [{"rank": i, **s.to_dict()} for i, s in enumerate(shapes, start=1)]}

    @router.get("/stats", response_model=StatsResponse, summary="Cache and queue counters")
    async def stats(engine: EngineDep) -> dict[str, Any]:
        snap = _view(engine).snapshot()
        return {
            "mode": snap.mode,
            "hits": snap.hits,
            "misses": snap.misses,
            "hit_rate": snap.hit_rate,
            "captures": snap.captures,
            "replays": snap.replays,
            "evictions": snap.evictions,
            "eager_runs": snap.eager_runs,
            "capture_failures": snap.capture_failures,
            "capture_seconds_total": snap.capture_seconds_total,
            "cached_graphs": snap.cached_graphs,
            "memory_bytes": snap.memory_bytes,
            "pending_captures": snap.pending_captures,
            "startup_prewarm": engine.startup_report.to_dict(),
            "queue_depth": engine.queue_depth,
            "batches": engine.batches,
            "texts": engine.texts,
        }

    return router
