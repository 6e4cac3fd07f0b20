"""Command line: `python -m app serve [--host H] [--port P] [--config FILE]`.

Subcommands live in COMMANDS; each imports what it needs when it runs. The benchmarks are not
part of the package: they run from a source checkout with `python -m bench` (bench/).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

logger = logging.getLogger("app")


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve",
        help="serve the model over HTTP",
        description="Serve the model. Every setting can also come from its environment "
        "variable or a TOML file (see docs/service.md); flags win over both.",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8000)")
    p.add_argument("--config", metavar="FILE", help="TOML settings file")
    p.add_argument("--log-level", help="critical|error|warning|info|debug")


def _add_internal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """What `serve` becomes or starts with several front ends (not for direct use)."""
    for name in ("supervise", "engine", "front-end"):
        p = sub.add_parser(name)
        if name == "supervise":
            p.add_argument("--workers", type=int, required=True)
        else:
            p.add_argument("--address", required=True)
        if name == "front-end":
            p.add_argument("--alive-fd", type=int, required=True)
            p.add_argument("--front-ends", type=int, required=True)
        for flag in ("--host", "--config", "--log-level"):
            p.add_argument(flag)
        p.add_argument("--port", type=int)


# A sidecar shares its host with the application it serves: OpenMP threads that spin while
# waiting for work take CPU the neighbours need. Set before torch (and its OpenMP) loads; an
# operator's own value wins.
NO_SPIN_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def _load(args: argparse.Namespace, warn: bool = False) -> Any:
    """The settings (flags over environment over file), logging set up; None if invalid.
    `warn`: log the settings variables that name no setting (`serve` does, once)."""
    from app.settings import SettingsError, load_settings, unknown_env_vars

    try:
        settings = load_settings(
            args.config, host=args.host, port=args.port, log_level=args.log_level
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s",
    )
    for name in unknown_env_vars() if warn else ():
        logger.warning("ignoring %s: no such setting (typo?)", name)
    return settings


def _passthrough(args: argparse.Namespace) -> list[str]:
    """The flags `serve` got, for its child processes (which read the same environment)."""
    out: list[str] = []
    for flag in ("host", "port", "config", "log_level"):
        value = getattr(args, flag)
        if value is not None:
            out += [f"--{flag.replace('_', '-')}", str(value)]
    return out


def serve(args: argparse.Namespace, rest: Sequence[str]) -> int:
    if rest:
        print(f"error: unrecognized arguments: {' '.join(rest)}", file=sys.stderr)
        return 2
    for name, value in NO_SPIN_ENV.items():
        os.environ.setdefault(name, value)
    settings = _load(args, warn=True)
    if settings is None:
        return 2
    logger.info("OpenMP threads wait %s", os.environ.get("OMP_WAIT_POLICY", "as OpenMP chooses"))
    from app.settings import SettingsError

    try:
        # What only this host can say (a CUDA device or float16 asked for on a host without
        # one), checked here for either shape: an engine process would find it too late.
        settings.engine_config()
        workers = settings.resolved_workers()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if workers > 1:
        # The checks above loaded torch, which the supervisor never uses: go on as a fresh
        # interpreter in this same process (same pid, signals and terminal) without it.
        command = [sys.executable, "-m", "app", "supervise", "--workers", str(workers)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, command + _passthrough(args))
    return _serve_in_process(settings)


def _serve_in_process(settings: Any) -> int:
    from app.main import create_app
    from app.serving.front_end import make_server, uvicorn_config
    from app.settings import SettingsError

    try:
        app = create_app(settings)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = uvicorn_config(app, settings, host=settings.host, port=settings.port)
    server = make_server(config, app.state.engine.begin_drain, settings.drain_delay_s)
    server.run()
    if not server.started:
        return 3  # start-up failed (the reason is in the log above)
    return 0


def supervise(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Internal: what `serve` becomes with several front ends, its settings already checked."""
    settings = _load(args)
    if settings is None:
        return 2
    from app.serving.supervisor import Supervisor

    return Supervisor(settings, args.workers, _passthrough(args)).run()


def engine(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Internal: the engine process the supervisor starts."""
    settings = _load(args)
    if settings is None:
        return 2
    from app.serving.engine_process import run_engine

    return run_engine(settings, args.address)


def front_end(args: argparse.Namespace, rest: Sequence[str]) -> int:
    """Internal: one front-end process the supervisor starts."""
    settings = _load(args)
    if settings is None:
        return 2
    from app.serving.front_end import run_front_end

    return run_front_end(settings, args.address, args.alive_fd, args.front_ends)


COMMANDS: dict[str, Callable[[argparse.Namespace, Sequence[str]], int]] = {
    "serve": serve,
    "supervise": supervise,
    "engine": engine,
    "front-end": front_end,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app", description="cudagraph-sidecar: batched embeddings over HTTP."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_internal(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    return COMMANDS[args.command](args, rest)


if __name__ == "__main__":
    sys.exit(main())
