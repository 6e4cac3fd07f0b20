"""Shared route dependencies: the engine and settings of the app serving the request."""

from __future__ import annotations

from fastapi import Request

from app.engine.engine import Engine
from app.settings import Settings


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings
