"""The engine process: the one engine (model, batcher, graph cache) behind every front end."""

from __future__ import annotations

import asyncio
import logging
import signal

from prometheus_client import CollectorRegistry

from app.engine.config import EngineConfigError
from app.engine.engine import Engine
from app.metrics import EngineMetrics
from app.serving.engine_server import EngineServer
from app.serving.lifeline import die_with_parent
from app.settings import Settings, engine_error_message

logger = logging.getLogger("app")

EXIT_STARTUP_FAILED = 3


def run_engine(settings: Settings, address: str) -> int:
    """Serve the engine at `address` until SIGTERM, then drain, save the profile and exit 0;
    3 when it cannot start (the reason is logged)."""
    die_with_parent()
    # Ctrl-C in a terminal reaches every process of the group: the supervisor decides when the
    # engine stops (after the front ends have drained), by SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    metrics = EngineMetrics(CollectorRegistry(auto_describe=True))
    engine = Engine(settings.engine_config(), observer=metrics)
    metrics.watch(engine, settings.metrics_hot_shapes)
    server = EngineServer(engine, metrics, address)

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await server.serve(stop)

    try:
        _run(main)
    except EngineConfigError as exc:
        logger.error("start-up failed: %s", engine_error_message(str(exc), exc.settings))
        return EXIT_STARTUP_FAILED
    except Exception as exc:
        logger.error("engine start-up failed: %s", exc)
        return EXIT_STARTUP_FAILED
    logger.info("engine stopped")
    return 0


def _run(main: object) -> None:
    try:
        import uvloop
    except ImportError:  # Windows
        asyncio.run(main())  # type: ignore[operator]
        return
    uvloop.run(main())  # type: ignore[operator]
