"""Shared route dependencies: the engine of the app serving the request.

They are `async def` on purpose: FastAPI runs a plain `def` dependency in its threadpool, a
thread hop per request for a dictionary lookup.
"""

from __future__ import annotations

from fastapi import Request

from app.engine.engine import Engine


def engine_of(request: Request) -> Engine:
    """The engine of the app serving `request` (for routes that take no dependencies)."""
    engine: Engine = request.app.state.engine
    return engine


async def get_engine(request: Request) -> Engine:
    return engine_of(request)
