"""Command line: `python -m app serve [--host H] [--port P] [--config FILE]`.

Subcommands live in COMMANDS; each imports what it needs when it runs. The benchmarks are not
part of the package: they run from a source checkout with `python -m bench` (bench/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

logger = logging.getLogger("app")


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP (one uvicorn worker)",
        description="Serve the model. Every setting can also come from its environment "
        "variable or a TOML file (see docs/service.md); flags win over both.",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--config", metavar="FILE", help="TOML settings file")
    p.add_argument("--log-level", help="critical|error|warning|info|debug")


# A sidecar shares its host with the application it serves: OpenMP threads that spin while
# waiting for work take CPU the neighbours need. Set before torch (and its OpenMP) loads; an
# operator's own value wins.
NO_SPIN_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def serve(args: argparse.Namespace, rest: Sequence[str]) -> int:
    if rest:
        print(f"error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    for name, value in NO_SPIN_ENV.items():
        os.environ.setdefault(name, value)
    import uvicorn

    from app.main import create_app
    from app.settings import SettingsError, load_settings, unknown_env_vars

    try:
        settings = load_settings(
            args.config, host=args.host, port=args.port, log_level=args.log_level
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in unknown_env_vars():
        logger.warning("ignoring %s: no such setting (typo?)", name)
    logger.info("OpenMP threads wait %s", os.environ.get("OMP_WAIT_POLICY", "as OpenMP chooses"))
    try:
        app = create_app(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,  # one process owns the model (and the GPU); scale with replicas
        lifespan="on",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
    )
    server = _make_server(config, app.state.engine.begin_drain, settings.drain_delay_s)
    server.run()
    if not server.started:
        return 3  # start-up failed (the reason is in the log above)
    return 0


def _make_server(config: Any, begin_drain: Callable[[], None], delay_s: float) -> Any:
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


COMMANDS: dict[str, Callable[[argparse.Namespace, Sequence[str]], int]] = {
    "serve": serve,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="cudagraph-sidecar: batched embeddings over HTTP."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    return COMMANDS[args.command](args, rest)


if __name__ == "__main__":
    sys.exit(main())
