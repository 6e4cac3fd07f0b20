"""What the routes need from the engine, and how they find it.

`ServingEngine` is served by the in-process `app.engine.Engine` (one process does everything)
and by `app.serving.client.EngineClient` (a front end talking to the engine process); the routes
cannot tell them apart. The dependencies are `async def` on purpose: FastAPI runs a plain `def`
dependency in its threadpool, a thread hop per request for a dictionary lookup.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from fastapi import Request

from app.engine.admission import EngineState
from models import TextTokenizer


class ModelDescription(Protocol):
    """What the routes read of the served model (a `SentenceEncoder` has all of it)."""

    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def task(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    @property
    def max_seq_len(self) -> int: ...

    @property
    def normalized(self) -> bool: ...

    @property
    def pooling(self) -> str: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def prompts(self) -> dict[str, str]: ...

    @property
    def default_prompt_name(self) -> str | None: ...

    @property
    def score_activation(self) -> str: ...

    @property
    def multi_label(self) -> bool: ...

    @property
    def tokenizer(self) -> TextTokenizer: ...

    @property
    def device(self) -> Any: ...

    @property
    def dtype(self) -> Any: ...


class ServingEngine(Protocol):
    @property
    def state(self) -> EngineState: ...

    @property
    def encoder(self) -> ModelDescription: ...

    @property
    def mode_name(self) -> str: ...

    @property
    def prewarm_done(self) -> int: ...

    @property
    def prewarm_total(self) -> int: ...

    @property
    def alive(self) -> bool: ...

    def check_ready(self, texts: int = 0) -> None: ...

    async def embed(self, token_ids: list[list[int]]) -> np.ndarray: ...

    async def operate(self, method: str, args: dict[str, Any]) -> Any: ...


def engine_of(request: Request) -> ServingEngine:
    """The engine of the app serving `request` (for routes that take no dependencies)."""
    engine: ServingEngine = request.app.state.engine
    return engine


async def get_engine(request: Request) -> ServingEngine:
    return engine_of(request)
