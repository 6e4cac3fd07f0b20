"""The in-process test app, in either shape: `make_app(settings)` is `create_app(settings)`, or,
when the environment says `SIDECAR_WORKERS=2` (or more), a front end whose engine is a real
engine process started by the app's lifespan and stopped after it. So
`SIDECAR_WORKERS=2 pytest tests/test_service_api.py ...` runs the contract through the
front-end path: tokenizing here, token ids over zmq, rows back as bytes, admin and metrics
forwarded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.server_process import ROOT


def front_ends_wanted() -> bool:
    return int(os.environ.get("SIDECAR_WORKERS", "1") or 1) > 1


def make_app(settings: Settings) -> FastAPI:
    if not front_ends_wanted():
        return create_app(settings)
    runtime = Path(tempfile.mkdtemp(prefix="sidecar-test-"))
    address = f"ipc://{runtime / 'engine.sock'}"
    alive_r, alive_w = os.pipe()
    app = create_app(settings, engine_address=address, engine_alive_fd=alive_r)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def with_engine(app: FastAPI) -> AsyncIterator[Any]:
        engine = subprocess.Popen(
            [sys.executable, "-m", "app", "engine", "--address", address],
            cwd=ROOT,
            env=engine_env(settings),
            pass_fds=(alive_w,),
        )
        os.close(alive_w)  # the engine holds the only write end now
        try:
            async with inner(app) as state:
                yield state
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(timeout=60)

    app.router.lifespan_context = with_engine
    return app


def engine_env(settings: Settings) -> dict[str, str]:
    """This process's environment with `settings` as SIDECAR_* variables (for the engine)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    env["SIDECAR_LOG_LEVEL"] = "warning"
    for name, value in settings.model_dump(mode="json", exclude={"config"}).items():
        if value is None or name in ("log_level", "workers"):
            continue
        if name == "admin_token":
            assert settings.admin_token is not None
            value = settings.admin_token.get_secret_value()
        env[f"SIDECAR_{name.upper()}"] = (
            json.dumps(value)
            if isinstance(value, list | dict)
            else str(value).lower()
            if isinstance(value, bool)
            else str(value)
        )
    return env
