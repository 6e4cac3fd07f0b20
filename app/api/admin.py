"""Admin API (bearer token): prewarm shapes, inspect and empty the graph cache, read stats.
Each route asks the engine (`app.engine.operations`), in this process or the engine process."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from app.api.auth import require_admin
from app.api.deps import ServingEngine, get_engine
from app.api.routing import AdminRoute, bind_body
from app.api.schemas import (
    ClearResponse,
    GraphsResponse,
    HotShapesResponse,
    PrewarmResponse,
    RequestModels,
    StatsResponse,
)
from app.engine.operations import InvalidOperation
from app.errors import ApiError, error_responses

EngineDep = Annotated[ServingEngine, Depends(get_engine)]
MAX_TOP_K = 1000


def _prewarm_args(body: Any) -> dict[str, Any]:
    """The prewarm request as plain data (what crosses to the engine process)."""
    if body is None:
        return {}
    args: dict[str, Any] = {}
    if body.top_k is not None:
        args["top_k"] = body.top_k
    if body.shapes is not None:
        args["shapes"] = [[s.batch_size, s.seq_len] for s in body.shapes]
    if body.descriptors is not None:
        args["descriptors"] = [
            [d.num_tokens, d.num_reqs, d.is_uniform_decode] for d in body.descriptors
        ]
    return args


async def _operate(engine: ServingEngine, method: str, args: dict[str, Any]) -> Any:
    try:
        return await engine.operate(method, args)
    except InvalidOperation as exc:
        raise ApiError(422, exc.code, str(exc)) from None


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
        result: dict[str, Any] = await _operate(engine, "prewarm", _prewarm_args(body))
        return result

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
        result: dict[str, Any] = await _operate(engine, "graphs", {})
        return result

    @router.delete(
        "/graphs",
        response_model=ClearResponse,
        responses=error_responses(413),  # a DELETE may carry a body; the size limit applies
        summary="Empty the graph cache",
    )
    async def clear_graphs(engine: EngineDep) -> dict[str, int]:
        result: dict[str, int] = await _operate(engine, "clear_graphs", {})
        return result

    @router.get(
        "/hot-shapes",
        response_model=HotShapesResponse,
        responses=error_responses(422),
        summary="Most requested shapes",
    )
    async def hot_shapes(
        engine: EngineDep, top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K)] = 10
    ) -> dict[str, Any]:
        result: dict[str, Any] = await _operate(engine, "hot_shapes", {"top_k": top_k})
        return result

    @router.get("/stats", response_model=StatsResponse, summary="Cache and queue counters")
    async def stats(engine: EngineDep) -> dict[str, Any]:
        result: dict[str, Any] = await _operate(engine, "stats", {})
        return result

    return router
