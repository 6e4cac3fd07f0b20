"""The app factory: `create_app(settings)` wires settings, engine, routes, errors and metrics.

Two shapes, same routes: by default the engine lives in this process (the lifespan loads the
model on the worker thread, warms up in the background, and on shutdown drains the queue and
saves the hot-shape profile); with `engine_address` the app is one front end of several and the
engine is the engine process at that address (`app.serving`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.api.admin import build_admin_router
from app.api.fast_path import FastPath, SidecarApp, direct_routes
from app.api.health import build_health_router
from app.api.inference import build_inference_router
from app.api.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware
from app.api.rerank import build_rerank_router
from app.api.schemas import Limits, build_request_models
from app.api.tei import build_tei_router
from app.engine.config import EngineConfigError
from app.errors import install_error_handlers
from app.metrics import FrontEndExposition, ServiceMetrics
from app.serving.client import EngineClient
from app.settings import Settings, SettingsError, engine_error_message, env_name, load_settings

if TYPE_CHECKING:
    from app.engine.engine import Engine

logger = logging.getLogger(__name__)

ENGINE_ANSWER_SLACK_S = 5.0
# English runs about 4 characters a token: a character limit below that many per token of the
# model's maximum refuses texts the model could read whole.
CHARS_PER_TOKEN = 4

INFERENCE_ROUTES = frozenset(
    {"/infer", "/v1/embeddings", "/embed", "/", "/v1/rerank", "/v2/rerank", "/rerank", "/predict"}
)


def create_app(
    settings: Settings | None = None,
    *,
    engine_address: str | None = None,
    engine_alive_fd: int | None = None,
    front_ends: int = 1,
) -> FastAPI:
    """The app; with `engine_address`, one of `front_ends` front ends of the engine process
    there (whose death the pipe `engine_alive_fd` reports, see `app.serving.client`)."""
    if settings is None:
        settings = load_settings()
    metrics: ServiceMetrics | FrontEndExposition
    engine: Engine | EngineClient
    if engine_address is None:
        # Here only: a front end of the engine process never imports torch.
        from app.engine.engine import Engine

        metrics = ServiceMetrics()
        engine = Engine(settings.engine_config(), observer=metrics)
        metrics.engine.watch(engine, settings.metrics_hot_shapes)
    else:
        client_metrics = FrontEndExposition(lambda: client.engine_metrics())
        # Past the engine's own request timeout (which answers 503 timeout itself), slack for
        # the answer to arrive; only an engine answering nothing at all gets there.
        answer_timeout_s = settings.request_timeout_s + ENGINE_ANSWER_SLACK_S
        client = EngineClient(engine_address, client_metrics, engine_alive_fd, answer_timeout_s)
        metrics, engine = client_metrics, client

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
        warn_if_texts_capped(settings.max_text_chars, engine.encoder.max_seq_len)
        try:
            yield
        finally:
            logger.info("shutting down")
            await engine.stop()
            logger.info("stopped")

    app = SidecarApp(
        title="cudagraph-sidecar",
        version="0.1.0",
        summary="Batched sentence embeddings served through an adaptive CUDA-graph cache.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.front_ends = front_ends  # the processes that tokenize (/info)
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

    # Added last = outermost: the metrics middleware also counts the 413s of the size limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        RequestMetricsMiddleware,
        route_label=metrics.route_label,
        observe=metrics.observe_request,
        timed_routes=INFERENCE_ROUTES,
    )
    # In front of everything: the inference routes' common case skips the stack above (and
    # counts itself in the metrics).
    app.fast_path = FastPath(
        direct_routes(routers), settings.max_body_bytes, metrics.observe_request
    )
    return app


def warn_if_texts_capped(max_text_chars: int, max_seq_len: int) -> None:
    """Say at start-up when the character limit refuses texts a long-context model could read
    (nomic-embed-text's 8192 tokens against the default 8192 characters, say)."""
    if max_text_chars < CHARS_PER_TOKEN * max_seq_len:
        name = env_name("max_text_chars")
        logger.warning(
            "texts over %d characters (%s) are refused, about %d tokens of English; the model "
            "reads up to %d: raise %s to send longer texts",
            max_text_chars,
            name,
            max_text_chars // CHARS_PER_TOKEN,
            max_seq_len,
            name,
        )
