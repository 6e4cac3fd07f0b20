"""Running an app under uvicorn: the draining server, and one front-end process of several."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from app.serving.lifeline import die_with_parent
from app.settings import Settings

logger = logging.getLogger("app")


def make_server(config: Any, begin_drain: Callable[[], None], delay_s: float) -> Any:
    """A uvicorn.Server that reports not-ready on the first SIGTERM/SIGINT, optionally keeps
    serving for `delay_s` (so load balancers see /readyz fail first), then shuts down as uvicorn
    does: stop accepting, wait for in-flight requests; the lifespan then drains the queue."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        _drain_timer: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            begin_drain()
            if delay_s <= 0 or self._drain_timer is not None:
                self._shut_down(sig, frame)  # a second signal shuts down at once
                return
            logger.info("draining: not ready; shutting down in %.1f s", delay_s)
            self._drain_timer = threading.Timer(delay_s, self._shut_down, args=(sig, frame))
            self._drain_timer.daemon = True
            self._drain_timer.start()

        def _shut_down(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has shut down, so the process would end
            # "killed by SIGTERM" (143) even after a complete drain; this CLI exits 0 instead.
            captured = getattr(self, "_captured_signals", None)
            if isinstance(captured, list):
                captured.clear()

    return DrainingServer(config)


def uvicorn_config(app: Any, settings: Settings, **where: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        lifespan="on",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        **where,
    )


def run_front_end(settings: Settings, address: str, alive_fd: int, front_ends: int) -> int:
    """One front end (of `front_ends`): HTTP on the supervisor's port (its own SO_REUSEPORT
    listener), the engine process at `address`. Exit status as `serve`'s: 0, or 3 if it never
    started."""
    from app.main import create_app
    from app.serving.supervisor import listening_socket

    die_with_parent()
    app = create_app(
        settings, engine_address=address, engine_alive_fd=alive_fd, front_ends=front_ends
    )
    server = make_server(
        uvicorn_config(app, settings), app.state.engine.begin_drain, settings.drain_delay_s
    )
    # Listening only once the engine has answered (uvicorn listens after the lifespan): until
    # then the port's connections go to the front ends that are ready.
    server.run(sockets=[listening_socket(settings.host, settings.port)])
    return 0 if server.started else 3
