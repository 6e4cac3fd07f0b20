"""The engine process's side of the channel: the one `Engine` (batcher, runner, graph cache)
answering every front end over a zmq ROUTER socket.

Front ends send token ids; the engine batches them across all front ends, runs them and answers
each request with its rows as raw float32 bytes. Admin calls run `app.engine.operations` on the
one cache. Whenever the engine's state or prewarm progress changes, every front end is told.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import zmq

from app.engine.admission import EngineState
from app.engine.batcher import BatcherError
from app.engine.engine import Engine
from app.engine.operations import OPERATIONS, InvalidOperation
from app.metrics import EngineMetrics
from app.serving.channel import Channel, Peer
from app.serving.messages import (
    Call,
    Cancel,
    Embed,
    Failed,
    Hello,
    Reply,
    Rows,
    Status,
    decode_to_engine,
)

logger = logging.getLogger(__name__)

STATUS_POLL_S = 0.05
# After a failed start, front ends that connect this soon still learn why.
STARTUP_FAILURE_LINGER_S = 1.0


def model_description(engine: Engine) -> dict[str, Any]:
    """What a front end needs to know of the model to validate, tokenize and answer."""
    enc = engine.encoder
    return {
        "name": enc.name,
        "family": enc.family,
        "task": enc.task,
        "dimensions": enc.dimensions,
        "max_seq_len": enc.max_seq_len,
        "normalized": enc.normalized,
        "pooling": enc.pooling,
        "labels": list(enc.labels),
        "prompts": dict(enc.prompts),
        "default_prompt_name": enc.default_prompt_name,
        "score_activation": enc.score_activation,
        "multi_label": enc.multi_label,
        "device": str(enc.device),
        "dtype": str(enc.dtype).removeprefix("torch."),
        "mode": engine.mode_name,
        "tokenizer": enc.tokenizer.to_json(),
        "pad_id": enc.tokenizer.pad_id,
        "type_stride": enc.tokenizer.type_stride,
    }


def failure_kind(exc: BaseException) -> str:
    """The name a front end maps back to the same exception (client.failure_exception)."""
    if isinstance(exc, BatcherError):
        return exc.reason
    if isinstance(exc, InvalidOperation):
        return "invalid"
    return "error"


class EngineServer:
    def __init__(self, engine: Engine, metrics: EngineMetrics, address: str) -> None:
        self.engine = engine
        self.metrics = metrics
        self.address = address
        self._channel: Channel | None = None
        self._peers: set[Peer] = set()
        self._waiting_hello: set[Peer] = set()
        self._pending: dict[tuple[Peer, int], asyncio.Future[list[np.ndarray]]] = {}
        self._sent_status: tuple[str, int, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: str | None = None  # why the engine could not start

    async def serve(self, stop: asyncio.Event) -> None:
        """Bind, load the model, answer until `stop` is set, then drain and stop the engine."""
        loop = asyncio.get_running_loop()
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a gone front end: an error, not a hang
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.bind(self.address)
        self._channel = Channel(sock, loop, self._on_frame, routed=True)
        watcher = loop.create_task(self._watch_status(), name="engine-status")
        try:
            try:
                await self.engine.start()
            except Exception as exc:  # tell the front ends why (those that connect meanwhile
                self._failure = str(exc)  # too), then fail as before
                self._answer_hellos()
                await asyncio.sleep(STARTUP_FAILURE_LINGER_S)
                raise
            self._answer_hellos()
            await stop.wait()
            logger.info("engine: stopping (%d texts queued)", self.engine.queue_depth)
        finally:
            await self.engine.stop()
            self._push_status()
            watcher.cancel()
            self._channel.close()

    # ------------------------------------------------------------ messages
    def _on_frame(self, peer: Peer, payload: bytes) -> None:
        for message in decode_to_engine(payload):
            if isinstance(message, Embed):
                self._embed(peer, message)
            elif isinstance(message, Cancel):
                fut = self._pending.pop((peer, message.id), None)
                if fut is not None:
                    fut.cancel()
            elif isinstance(message, Call):
                task = asyncio.get_running_loop().create_task(self._call(peer, message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(message, Hello):
                logger.info("engine: front end %d connected", message.pid)
                self._peers.add(peer)
                self._waiting_hello.add(peer)
                self._answer_hellos()

    def _send(self, peer: Peer, message: Any) -> None:
        assert self._channel is not None
        self._channel.send(peer, message)

    def _embed(self, peer: Peer, message: Embed) -> None:
        try:
            fut = self.engine.enqueue(message.ids)
        except Exception as exc:
            self._send(peer, Failed(message.id, failure_kind(exc), str(exc)))
            return
        key = (peer, message.id)
        self._pending[key] = fut
        fut.add_done_callback(lambda f: self._answer(peer, message.id, f))

    def _answer(self, peer: Peer, request_id: int, fut: asyncio.Future[list[np.ndarray]]) -> None:
        self._pending.pop((peer, request_id), None)
        if fut.cancelled():
            return  # the front end asked; nobody waits for an answer
        exc = fut.exception()
        if exc is not None:
            self._send(peer, Failed(request_id, failure_kind(exc), str(exc)))
            return
        rows = fut.result()
        data = b"".join(row.tobytes() for row in rows)  # C-order (n, dims) float32
        self._send(peer, Rows(request_id, len(rows), data))

    async def _call(self, peer: Peer, message: Call) -> None:
        try:
            if message.method == "metrics":
                value: Any = self.metrics.render()
            else:
                operation = OPERATIONS.get(message.method)
                if operation is None:
                    raise InvalidOperation("unknown_operation", f"no operation {message.method}")
                value = await operation(self.engine, message.args)
        except Exception as exc:
            kind = failure_kind(exc)
            if kind == "error":
                logger.exception("engine: %s failed", message.method)
            code = exc.code if isinstance(exc, InvalidOperation) else ""
            self._send(peer, Failed(message.id, kind, str(exc), code))
            return
        self._send(peer, Reply(message.id, value))

    # -------------------------------------------------------------- status
    def _status(self, model: bool = False) -> Status:
        engine = self.engine
        described = model_description(engine) if model else None
        return Status(engine.state.value, engine.prewarm_done, engine.prewarm_total, described)

    def _answer_hellos(self) -> None:
        if self._failure is not None and self._channel is not None:
            failed = Status(EngineState.STOPPED.value, 0, 0, error=self._failure)
            for peer in self._waiting_hello:
                self._send(peer, failed)
            self._waiting_hello.clear()
            return
        if not self.engine.loaded or self._channel is None:
            return  # answered once the model is loaded
        for peer in self._waiting_hello:
            self._send(peer, self._status(model=True))
        self._waiting_hello.clear()

    def _push_status(self) -> None:
        status = self._status()
        key = (status.state, status.prewarm_done, status.prewarm_total)
        if key == self._sent_status or self._channel is None:
            return
        self._sent_status = key
        for peer in self._peers - self._waiting_hello:
            self._send(peer, status)

    async def _watch_status(self) -> None:
        while True:
            self._push_status()
            await asyncio.sleep(STATUS_POLL_S)
