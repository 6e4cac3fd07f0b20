"""GET /healthz (alive), GET /readyz (loaded, start-up prewarm run), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import ServingEngine, engine_of
from app.api.schemas import HealthResponse, ReadyResponse
from app.engine.admission import EngineState
from app.errors import error_response, error_responses
from app.metrics import CONTENT_TYPE


def build_health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get(
        "/healthz",
        response_model=HealthResponse,
        responses=error_responses(503),
        summary="Liveness",
    )
    async def healthz(request: Request) -> Response:
        """The process is up and its event loop answers, and the engine process (where there is
        one) is alive; says nothing about the model being loaded."""
        if not engine_of(request).alive:
            return error_response(503, "engine_down", "the engine process has stopped")
        return JSONResponse({"status": "ok"})

    @router.get(
        "/readyz",
        response_model=ReadyResponse,
        responses=error_responses(503),
        summary="Readiness",
    )
    async def readyz(request: Request) -> Response:
        """200 once the model is loaded and the start-up prewarm has run (a shape that failed
        to capture is served eagerly: see GET /admin/stats); 503 while starting, warming up
        or draining (with the reason)."""
        engine: ServingEngine = engine_of(request)
        state = engine.state
        if state is EngineState.READY:
            return JSONResponse(
                {
                    "status": "ready",
                    "model": engine.encoder.name,
                    # what the device and dtype settings (auto) resolved to on this machine
                    "device": str(engine.encoder.device),
                    "dtype": str(engine.encoder.dtype).removeprefix("torch."),
                    "mode": engine.mode_name,
                    "prewarm": {"done": engine.prewarm_done, "total": engine.prewarm_total},
                }
            )
        if not engine.alive:
            detail = "the engine process has stopped"
        elif state is EngineState.WARMING:
            detail = f"warming up: {engine.prewarm_done}/{engine.prewarm_total} shapes prewarmed"
        elif state is EngineState.STARTING:
            detail = "starting: loading the model"
        else:
            detail = f"{state.value}: shutting down"
        return error_response(503, "not_ready", detail, {"Retry-After": "1"})

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
        summary="Prometheus metrics",
    )
    async def metrics(request: Request) -> Response:
        return Response(await request.app.state.metrics.render(), media_type=CONTENT_TYPE)

    return router
