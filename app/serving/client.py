"""A front end's view of the engine process: the routes' `ServingEngine`, over zmq.

The routes tokenize here, in the front end, with the tokenizer the engine describes (the fast
tokenizer's work stays out of the engine process); token ids go to the engine and embeddings
come back as raw float32 bytes. The engine's
state arrives whenever it changes. The engine's death is seen at once: the front end holds the
read end of a pipe whose only write end the engine process holds, so the pipe reads EOF the
moment that process ends; every request waiting on it is then answered 503 and /healthz fails.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from app.engine.admission import EngineState, NotReady, admit
from app.engine.batcher import (
    REASON_NOT_READY,
    REJECT_REASONS,
    BatcherClosed,
    BatcherError,
    BatchFailed,
    QueueFull,
    RequestTimedOut,
)
from app.engine.operations import InvalidOperation
from app.metrics import FrontEndMetrics
from app.serving.channel import Channel
from app.serving.messages import (
    Call,
    Cancel,
    Embed,
    Failed,
    Hello,
    Reply,
    Rows,
    Status,
    decode_from_engine,
)
from models import TextTokenizer

logger = logging.getLogger(__name__)

# A scrape waits this long for the engine's part (Prometheus' own default timeout is 10 s).
METRICS_TIMEOUT_S = 5.0
STARTUP_FAILURE_GRACE_S = 0.5


class EngineUnavailable(BatcherError):
    """The engine process has stopped: nothing can be answered (503; the service restarts)."""

    reason = REASON_NOT_READY


# The engine names a refusal by its class's `reason` (engine_server.failure_kind).
_FAILURES: dict[str, type[BatcherError]] = {
    cls.reason: cls for cls in (QueueFull, RequestTimedOut, BatcherClosed, NotReady, BatchFailed)
}


def failure_exception(failure: Failed) -> Exception:
    """The exception the in-process engine would have raised."""
    if failure.kind == "invalid":
        return InvalidOperation(failure.code, failure.message)
    kind = _FAILURES.get(failure.kind)
    if kind is None:
        return RuntimeError(f"the engine failed: {failure.message}")
    return kind(failure.message)


@dataclass(frozen=True)
class ModelInfo:
    """The served model as the engine described it (`engine_server.model_description`)."""

    name: str
    family: str
    task: str
    dimensions: int
    max_seq_len: int
    normalized: bool
    pooling: str
    labels: tuple[str, ...]
    prompts: dict[str, str]
    default_prompt_name: str | None
    score_activation: str
    multi_label: bool
    device: str
    dtype: str
    mode: str
    tokenizer: TextTokenizer = field(repr=False)

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> ModelInfo:
        tokenizer = TextTokenizer.from_json(
            d["tokenizer"], d["max_seq_len"], pad_id=d["pad_id"], type_stride=d["type_stride"]
        )
        fields = {k: v for k, v in d.items() if k not in ("tokenizer", "pad_id", "type_stride")}
        fields["labels"] = tuple(fields["labels"])
        return cls(tokenizer=tokenizer, **fields)


class EngineClient:
    """`answer_timeout_s`: how long an inference request waits for the engine's answer before
    it is refused as timed out (the engine's own request timeout, plus slack: only an engine
    that answers nothing at all, e.g. stopped by a debugger or hung, gets there)."""

    def __init__(
        self,
        address: str,
        observer: FrontEndMetrics,
        alive_fd: int | None = None,
        answer_timeout_s: float = 60.0,
    ) -> None:
        self.address = address
        self.answer_timeout_s = answer_timeout_s
        self._observer = observer
        self._alive_fd = alive_fd
        self._alive = True
        self._draining = False
        self._channel: Channel | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._status = Status(EngineState.STARTING.value, 0, 0)
        self._model: ModelInfo | None = None
        self._described: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ state
    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def state(self) -> EngineState:
        if not self._alive:
            return EngineState.STOPPED
        state = EngineState(self._status.state)
        if self._draining and state is EngineState.READY:
            return EngineState.DRAINING
        return state

    @property
    def encoder(self) -> ModelInfo:
        if self._model is None:
            raise NotReady("the model is not loaded yet")
        return self._model

    @property
    def mode_name(self) -> str:
        return self.encoder.mode

    @property
    def prewarm_done(self) -> int:
        return self._status.prewarm_done

    @property
    def prewarm_total(self) -> int:
        return self._status.prewarm_total

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Connect and wait until the engine has described its model (it answers once the
        model is loaded); raises if the engine process stops first."""
        loop = asyncio.get_running_loop()
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.address)
        self._channel = Channel(sock, loop, self._on_frame, routed=False)
        self._described = loop.create_future()
        if self._alive_fd is not None:
            loop.add_reader(self._alive_fd, self._check_engine)
        self._channel.send(b"", Hello(os.getpid()))
        await self._described
        logger.info("connected to the engine at %s (%s)", self.address, self.encoder.name)

    def begin_drain(self) -> None:
        """Report not ready at once; requests are still taken until the server stops."""
        self._draining = True

    async def stop(self) -> None:
        if self._alive_fd is not None and self._alive:
            asyncio.get_running_loop().remove_reader(self._alive_fd)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._fail_all(EngineUnavailable("this front end is shutting down"))

    # ---------------------------------------------------------------- serving
    def check_ready(self, texts: int = 0) -> None:
        """Refuse at once what the engine would refuse (its queue room is checked there)."""
        if not self._alive:
            self._observer.on_reject(REASON_NOT_READY)
            raise EngineUnavailable("the engine process has stopped; retry on another instance")
        # A draining engine's queue may still be open: the engine itself refuses once it closes.
        admit(EngineState(self._status.state), True, self._observer.on_reject)

    async def embed(self, token_ids: list[list[int]]) -> np.ndarray:
        self.check_ready()
        self._observer.on_request(len(token_ids))
        request_id = next(self._ids)
        fut = self._ask(request_id, Embed(request_id, token_ids))
        try:
            answer: Rows = await self._answer(request_id, fut, self.answer_timeout_s)
        except BatcherError as exc:
            if exc.reason in REJECT_REASONS and not isinstance(exc, EngineUnavailable):
                self._observer.on_reject(exc.reason)
            raise
        matrix = np.frombuffer(answer.data, dtype=np.float32)
        return (
            matrix.reshape(answer.n, -1) if answer.n else matrix.reshape(0, self.encoder.dimensions)
        )

    async def operate(self, method: str, args: dict[str, Any]) -> Any:
        """An admin operation on the engine's cache. All but a prewarm (which may capture for
        minutes) get the answer timeout: a hung engine is a 503, not a hang."""
        request_id = next(self._ids)
        fut = self._ask(request_id, Call(request_id, method, args))
        timeout_s = None if method == "prewarm" else self.answer_timeout_s
        reply: Reply = await self._answer(request_id, fut, timeout_s)
        return reply.value

    async def engine_metrics(self) -> bytes:
        """The engine's metrics text; TimeoutError if it does not answer within a scrape's
        patience."""
        value = await asyncio.wait_for(self.operate("metrics", {}), METRICS_TIMEOUT_S)
        return bytes(value)

    # --------------------------------------------------------------- internals
    def _ask(self, request_id: int, message: Any) -> asyncio.Future[Any]:
        if not self._alive or self._channel is None:
            self._observer.on_reject(REASON_NOT_READY)
            raise EngineUnavailable("the engine process has stopped; retry on another instance")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = fut
        fut.add_done_callback(lambda _: self._waiting.pop(request_id, None))
        self._channel.send(b"", message)
        return fut

    async def _answer(
        self, request_id: int, fut: asyncio.Future[Any], timeout_s: float | None
    ) -> Any:
        """The engine's answer to `request_id`; RequestTimedOut after `timeout_s` (None: no
        limit). A caller that gives up tells the engine, which drops what it still holds."""
        loop = asyncio.get_running_loop()
        timer = None if timeout_s is None else loop.call_later(timeout_s, self._no_answer, fut)
        try:
            return await fut
        except (asyncio.CancelledError, RequestTimedOut):
            if self._channel is not None:
                self._channel.send(b"", Cancel(request_id))
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _no_answer(self, fut: asyncio.Future[Any]) -> None:
        if fut.done():
            return
        fut.set_exception(
            RequestTimedOut(
                f"the engine did not answer within {self.answer_timeout_s:g} s; retry later"
            )
        )

    def _on_frame(self, _peer: bytes, payload: bytes) -> None:
        for message in decode_from_engine(payload):
            if isinstance(message, Status):
                self._on_status(message)
                continue
            fut = self._waiting.get(message.id)
            if fut is None or fut.done():
                continue  # cancelled here meanwhile
            if isinstance(message, Failed):
                fut.set_exception(failure_exception(message))
            else:
                fut.set_result(message)

    def _on_status(self, status: Status) -> None:
        if status.error is not None and self._described is not None:
            if not self._described.done():
                self._described.set_exception(
                    RuntimeError(f"the engine could not start: {status.error}")
                )
            return
        if status.model is not None:
            self._model = ModelInfo.from_description(status.model)
            if self._described is not None and not self._described.done():
                self._described.set_result(None)
        self._status = Status(status.state, status.prewarm_done, status.prewarm_total)

    def _check_engine(self) -> None:
        """The liveness pipe is readable: only ever at EOF, when the engine process ended."""
        assert self._alive_fd is not None
        if os.read(self._alive_fd, 64):
            return
        asyncio.get_running_loop().remove_reader(self._alive_fd)
        self._alive = False
        logger.error("the engine process has stopped: answering 503 until replaced")
        gone = EngineUnavailable("the engine process has stopped; retry on another instance")
        self._fail_all(gone)
        if self._described is not None and not self._described.done():
            # It may have said why on its way out: give its last frame a moment to arrive.
            asyncio.get_running_loop().call_later(STARTUP_FAILURE_GRACE_S, self._failed_to_start)

    def _failed_to_start(self) -> None:
        if self._channel is not None:
            self._channel.drain()
        if self._described is not None and not self._described.done():
            self._described.set_exception(RuntimeError("the engine process stopped while starting"))

    def _fail_all(self, exc: Exception) -> None:
        for fut in list(self._waiting.values()):
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()
