"""Dynamic batcher: gathers tokenized texts from many requests into model batches.

Runs on the asyncio event loop; the model call itself runs on ONE worker thread (an executor
with a single thread), so the loop never blocks and all torch work stays on one thread.

Policy: a batch is cut when it holds `max_batch_size` texts, when adding the next text would
make the padded rectangle (texts x longest text) exceed `max_batch_tokens`, or when the oldest
queued text has waited `max_batch_wait_s`. While the worker is busy with one batch, new
requests accumulate in the queue, so load forms larger batches by itself even with no wait.

Between batches the worker may do one unit of background work (the engine captures a graph):
when nothing is queued, or when the work says it is overdue. A unit that raises is logged.

A request of several texts is split into items (one per text) that may land in different
batches; it is answered once all of its items are done. The queue is bounded in texts: a
request that does not fit is refused at once (QueueFull). Every request has a deadline; past
it the caller gets RequestTimedOut and its remaining items are dropped. A model call that
raises fails only the requests with an item in that batch (BatchFailed).

This module knows nothing of HTTP or torch: `run_batch` is any callable taking the token-id
lists of a batch and returning one result per item, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, Protocol, TypeVar

logger = logging.getLogger(__name__)

R = TypeVar("R")

# Rejection reasons, the bounded label values of sidecar_rejected_total{reason}.
REASON_QUEUE_FULL = "queue_full"
REASON_TIMEOUT = "timeout"
REASON_DRAINING = "draining"
REASON_NOT_READY = "not_ready"
REJECT_REASONS = (REASON_QUEUE_FULL, REASON_TIMEOUT, REASON_DRAINING, REASON_NOT_READY)


class BatcherError(RuntimeError):
    """Base class of the errors a submitter can get; `reason` is a bounded label value."""

    reason = "error"


class QueueFull(BatcherError):
    reason = REASON_QUEUE_FULL


class RequestTimedOut(BatcherError):
    reason = REASON_TIMEOUT


class BatcherClosed(BatcherError):
    reason = REASON_DRAINING


class BatchFailed(BatcherError):
    """The model call of a batch holding one of this request's texts raised."""

    reason = "batch_failed"


class BatchObserver(Protocol):
    """Receives what the metrics need; called on the event loop thread."""

    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None: ...

    def on_reject(self, reason: str) -> None: ...


class BackgroundWork(Protocol):
    """Work the worker does between batches. `background_due` runs on the event loop and must be
    cheap; `run_background` runs on the worker. `idle`: no text is waiting."""

    def background_due(self, idle: bool) -> bool: ...

    def run_background(self, idle: bool) -> None: ...


class _NullObserver:
    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        pass

    def on_reject(self, reason: str) -> None:
        pass


class _Request(Generic[R]):
    """One submitted request: its texts (items), where it stands, and its future."""

    __slots__ = ("items", "future", "enqueued", "next_index", "pending", "results", "dead", "timer")

    def __init__(self, items: list[list[int]], future: asyncio.Future[list[R]], now: float):
        self.items = items
        self.future = future
        self.enqueued = now  # loop.time() when queued
        self.next_index = 0  # items before this one have been taken into batches
        self.pending = len(items)  # items without a result yet
        self.results: list[R | None] = [None] * len(items)
        self.dead = False  # answered early (timeout, failure, caller gone): skip what is left
        self.timer: asyncio.TimerHandle | None = None


class Batcher(Generic[R]):
    def __init__(
        self,
        run_batch: Callable[[list[list[int]]], Sequence[R]],
        *,
        executor: Executor,
        max_batch_size: int = 32,
        max_batch_tokens: int = 8192,
        max_batch_wait_s: float = 0.0,
        max_queue: int = 1024,
        timeout_s: float = 30.0,
        observer: BatchObserver | None = None,
        background: BackgroundWork | None = None,
    ) -> None:
        if max_batch_size < 1 or max_batch_tokens < 1 or max_queue < 1:
            raise ValueError("max_batch_size, max_batch_tokens and max_queue must be >= 1")
        if max_batch_wait_s < 0 or timeout_s <= 0:
            raise ValueError("max_batch_wait_s must be >= 0 and timeout_s > 0")
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_wait_s = max_batch_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._observer: BatchObserver = observer or _NullObserver()
        self._background = background
        self._queue: deque[_Request[R]] = deque()
        self._depth = 0  # live items queued (taken items and dead requests excluded)
        self._closed = False
        self._busy = False  # a batch is on the worker
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # model calls made (one per batch)
        self.items_done = 0  # texts that went through a model call

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Texts waiting for a batch (the sidecar_queue_depth gauge)."""
        return self._depth

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def idle(self) -> bool:
        return not self._busy and self._depth == 0

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Start the batching task on the running event loop."""
        if self._task is not None:
            raise RuntimeError("batcher already started")
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = self._loop.create_task(self._batch_loop(), name="sidecar-batcher")

    def close(self) -> None:
        """Stop admitting; what is queued still runs (see drain)."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def drain(self) -> None:
        """Close, then wait until every queued request has been answered."""
        self.close()
        if self._task is not None:
            await asyncio.shield(self._task)

    # ----------------------------------------------------------------- submit
    def check_room(self, n: int) -> None:
        """Raise QueueFull (counted) unless `n` more texts fit; callers may check before they
        tokenize, so an overloaded server spends nothing on requests it will refuse."""
        if self._depth + n > self.max_queue:
            self._observer.on_reject(REASON_QUEUE_FULL)
            raise QueueFull(
                f"the queue is full ({self._depth} of {self.max_queue} texts waiting); retry later"
            )

    async def submit(self, items: list[list[int]]) -> list[R]:
        """Queue the token ids of one request's texts; returns one result per text, in order.
        Cancelling the wait (the caller went away) drops what is still queued of it."""
        return await self.enqueue(items)

    def enqueue(self, items: list[list[int]]) -> asyncio.Future[list[R]]:
        """`submit` without the coroutine: the future of one result per text. Raises at once
        when refused; cancelling the future drops what is still queued of the request (a batch
        already holding its items finishes normally for the others)."""
        if self._closed:
            self._observer.on_reject(REASON_DRAINING)
            raise BatcherClosed("the server is shutting down; retry on another instance")
        loop = self._loop
        if loop is None or self._wakeup is None:
            raise RuntimeError("batcher not started")
        fut: asyncio.Future[list[R]] = loop.create_future()
        n = len(items)
        if n == 0:
            fut.set_result([])
            return fut
        self.check_room(n)
        req: _Request[R] = _Request(items, fut, loop.time())
        req.timer = loop.call_at(req.enqueued + self.timeout_s, self._expire, req)
        fut.add_done_callback(lambda f: self._finished(req, f))
        self._queue.append(req)
        self._depth += n
        self._wakeup.set()
        return fut

    def _finished(self, req: _Request[R], fut: asyncio.Future[list[R]]) -> None:
        assert req.timer is not None
        req.timer.cancel()
        if fut.cancelled():
            self._kill(req)

    def _expire(self, req: _Request[R]) -> None:
        if req.future.done():
            return
        self._kill(req)
        self._observer.on_reject(REASON_TIMEOUT)
        req.future.set_exception(
            RequestTimedOut(f"the request waited more than {self.timeout_s:g} s and was dropped")
        )

    def _kill(self, req: _Request[R]) -> None:
        """Mark a request answered early; its items still queued stop counting as depth."""
        if req.dead:
            return
        req.dead = True
        self._depth -= len(req.items) - req.next_index
        req.next_index = len(req.items)

    # ------------------------------------------------------------ batch loop
    async def _batch_loop(self) -> None:
        assert self._loop is not None and self._wakeup is not None
        loop, wakeup = self._loop, self._wakeup
        while True:
            try:
                if not await self._next_batch(loop, wakeup):
                    return  # closed and empty
            except Exception:
                # A bug here must not stop batching for good: log it and go on. Requests whose
                # futures were left pending are still answered by their deadline timers.
                logger.exception("batcher: unexpected error; continuing")

    async def _next_batch(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> bool:
        """Wait for work, run one batch on the worker, answer it. False once closed and empty."""
        self._drop_dead_heads()
        if not self._queue:
            if self._closed:
                return False
            if await self._run_background(loop, idle=True):
                return True
            wakeup.clear()
            await wakeup.wait()
            return True
        if self.max_batch_wait_s > 0:
            await self._wait_for_more(loop, wakeup)
            self._drop_dead_heads()
            if not self._queue:
                return True
        batch, slots, waits = self._take(loop.time())
        if not batch:
            return True
        self._busy = True
        self.batches += 1
        self.items_done += len(batch)
        self._observer.on_batch(len(batch), waits)
        try:
            out = await loop.run_in_executor(self._executor, self._run_batch, batch)
            if len(out) != len(batch):
                raise RuntimeError(f"run_batch returned {len(out)} results for {len(batch)}")
        except Exception as exc:  # the model failed: only this batch's requests fail
            logger.exception("batch of %d texts failed", len(batch))
            self._fail(slots, exc)
            return True
        finally:
            self._busy = False
        self._deliver(slots, out)
        if self._queue:  # under load: only work that has waited too long for an idle gap
            await self._run_background(loop, idle=False)
        return True

    async def _run_background(self, loop: asyncio.AbstractEventLoop, *, idle: bool) -> bool:
        """One unit of background work on the worker, if due; True when one ran."""
        work = self._background
        if work is None or self._closed or not work.background_due(idle):
            return False
        self._busy = True
        try:
            await loop.run_in_executor(self._executor, work.run_background, idle)
        except Exception:
            logger.exception("background work between batches failed; continuing")
        finally:
            self._busy = False
        return True

    def _drop_dead_heads(self) -> None:
        queue = self._queue
        while queue and (queue[0].dead or queue[0].next_index >= len(queue[0].items)):
            queue.popleft()

    async def _wait_for_more(self, loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
        """Hold the batch open until it is full or the oldest text has waited max_batch_wait_s."""
        oldest = self._queue[0].enqueued
        deadline = oldest + self.max_batch_wait_s
        while self._depth < self.max_batch_size and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take(
        self, now: float
    ) -> tuple[list[list[int]], list[tuple[_Request[R], int]], list[float]]:
        """Pop up to one batch of items, oldest first, within the size and token budgets."""
        batch: list[list[int]] = []
        slots: list[tuple[_Request[R], int]] = []
        waits: list[float] = []
        longest = 0
        queue = self._queue
        max_size, max_tokens = self.max_batch_size, self.max_batch_tokens
        while queue and len(batch) < max_size:
            req = queue[0]
            if req.dead:
                queue.popleft()
                continue
            items = req.items
            while req.next_index < len(items) and len(batch) < max_size:
                ids = items[req.next_index]
                grown = max(longest, len(ids))
                # Budget on the padded rectangle the model computes: texts x longest text.
                if batch and grown * (len(batch) + 1) > max_tokens:
                    return batch, slots, waits
                if req.next_index == 0:
                    waits.append(now - req.enqueued)  # one queue wait per request
                batch.append(ids)
                slots.append((req, req.next_index))
                longest = grown
                req.next_index += 1
                self._depth -= 1
            if req.next_index >= len(items):
                queue.popleft()
        return batch, slots, waits

    def _deliver(self, slots: list[tuple[_Request[R], int]], out: Sequence[R]) -> None:
        for (req, index), row in zip(slots, out, strict=True):
            if req.future.done():
                continue  # timed out, failed in another batch, or the caller left
            req.results[index] = row
            req.pending -= 1
            if req.pending == 0:
                req.future.set_result(req.results)  # type: ignore[arg-type]

    def _fail(self, slots: list[tuple[_Request[R], int]], exc: Exception) -> None:
        seen: set[int] = set()
        for req, _ in slots:
            if id(req) in seen or req.future.done():
                continue
            seen.add(id(req))
            self._kill(req)
            failure = BatchFailed(f"inference failed for this batch: {type(exc).__name__}")
            failure.__cause__ = exc
            req.future.set_exception(failure)
