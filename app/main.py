"""The app factory: `create_app(settings)` wires settings, engine, routes, errors and metrics.

Nothing is loaded at import time: the lifespan loads the model (on the worker thread) when the
server starts, warms up in the background, and on shutdown drains the queue and saves the
hot-shape profile.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api.admin import build_admin_router
from app.api.health import build_health_router
from app.api.inference import build_inference_router
from app.api.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from app.api.rerank import build_rerank_router
from app.api.schemas import Limits, build_request_models
from app.api.tei import build_tei_router
from app.engine.engine import Engine, EngineConfigError
from app.errors import install_error_handlers
from app.metrics import GraphCacheCollector, ServiceMetrics
from app.settings import Settings, SettingsError, engine_error_message, load_settings

logger = logging.getLogger(__name__)

INFERENCE_ROUTES = frozenset(
    {"/infer", "/v1/embeddings", "/embed", "/", "/v1/rerank", "/v2/rerank", "/rerank", "/predict"}
)


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None:
        settings = load_settings()
    metrics = ServiceMetrics()
    engine = Engine(settings.engine_config(), observer=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("starting with settings %s", settings.log_summary())
        try:
            await engine.start()
        except EngineConfigError as exc:
            message = engine_error_message(str(exc), exc.settings)
            logger.error("start-up failed: %s", message)
            await engine.stop()
            raise SettingsError(message) from exc
        except Exception as exc:
            logger.error("start-up failed: %s", exc)
            await engine.stop()
            raise
        try:
            yield
        finally:
            logger.info("shutting down: draining %d queued texts", engine.queue_depth)
            await engine.stop()
            logger.info("stopped")

    app = FastAPI(
        title="cudagraph-sidecar",
        version="0.1.0",
        summary="Batched sentence embeddings served through an adaptive CUDA-graph cache.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.metrics = metrics

    limits = Limits(
        max_inputs=settings.max_inputs_per_request,
        # A call's pairs must fit the queue, which counts pairs.
        max_documents=min(settings.max_documents, settings.max_queue),
        max_text_chars=settings.max_text_chars,
        max_batch_size=settings.max_batch_size,
        max_seq_len=settings.max_seq_len or 8192,
        max_num_tokens=settings.max_batch_tokens,
    )
    models = build_request_models(limits)
    routers = [
        build_inference_router(models),
        build_tei_router(models),
        build_rerank_router(models),
        build_admin_router(models),
        build_health_router(),
    ]
    for router in routers:
        app.include_router(router)
    install_error_handlers(app, settings.retry_after_s)

    # Route templates are the only path label values (anything else counts as "other").
    paths = [r.path for router in routers for r in router.routes if isinstance(r, APIRoute)]
    metrics.set_routes(paths + ["/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"])
    metrics.watch_queue(lambda: engine.queue_depth)
    metrics.add_graph_collector(
        GraphCacheCollector(lambda: engine.graphs, settings.metrics_hot_shapes)
    )

    # Added last = outermost: the metrics middleware also counts the 413s of the size limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestMetricsMiddleware,
        route_label=metrics.route_label,
        observe=metrics.observe_request,
        timed_routes=INFERENCE_ROUTES,
    )
    return app
