"""The engine's life-cycle states and the one admission rule, wherever the engine runs (this
process, or the engine process behind a front end)."""

from __future__ import annotations

import enum
from collections.abc import Callable

from app.engine.batcher import REASON_DRAINING, REASON_NOT_READY, BatcherClosed, BatcherError


class EngineState(str, enum.Enum):
    STARTING = "starting"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class NotReady(BatcherError):
    reason = REASON_NOT_READY


def admit(state: EngineState, queue_open: bool, on_reject: Callable[[str], None]) -> None:
    """Ready admits, draining admits while the queue is still open; otherwise a refusal,
    counted by `on_reject(reason)`."""
    if state is EngineState.READY or (state is EngineState.DRAINING and queue_open):
        return
    if state in (EngineState.DRAINING, EngineState.STOPPED):
        on_reject(REASON_DRAINING)
        raise BatcherClosed("the server is shutting down; retry on another instance")
    on_reject(REASON_NOT_READY)
    raise NotReady(f"not ready ({state.value}); retry shortly")
