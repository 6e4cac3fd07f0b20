"""The dynamic batcher on its own, driven with a plain Python callable as the "model"."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.engine.batcher import Batcher, BatcherClosed, BatchFailed, QueueFull, RequestTimedOut


class Model:
    """A 'model' mapping each token-id list to its sum; records each call's batch (its input)."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls: list[list[list[int]]] = []
        self.threads: set[str] = set()
        self.gate: threading.Event | None = None

    def __call__(self, batch: list[list[int]]) -> list[int]:
        self.calls.append(batch)
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and any(self.fail_on in ids for ids in batch):
            raise RuntimeError("boom")
        return [sum(ids) for ids in batch]


class Observer:
    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.waits: list[float] = []
        self.rejects: list[str] = []

    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        self.sizes.append(size)
        self.waits.extend(queue_waits)

    def on_reject(self, reason: str) -> None:
        self.rejects.append(reason)


def make(model: Model, **kw: object) -> tuple[Batcher[int], Observer, ThreadPoolExecutor]:
    obs = Observer()
    ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-worker")
    b: Batcher[int] = Batcher(model, executor=ex, observer=obs, **kw)  # type: ignore[arg-type]
    return b, obs, ex


def run(coro_fn):  # noqa: ANN001, ANN201 - tiny helper
    return asyncio.run(coro_fn())


def test_single_request_in_order_on_worker_thread() -> None:
    model = Model()

    async def main() -> None:
        b, obs, ex = make(model)
        b.start()
        assert await b.submit([[1, 2], [3], [4, 5, 6]]) == [3, 3, 15]
        assert await b.submit([]) == []
        await b.drain()
        ex.shutdown()
        assert obs.sizes == [3] and len(obs.waits) == 1
        assert model.threads == {"test-worker_0"}
        assert b.depth == 0 and b.batches == 1 and b.items_done == 3

    run(main)


def test_concurrent_requests_form_fewer_batches_with_equal_answers() -> None:
    model = Model(delay_s=0.02)

    async def main() -> None:
        b, obs, ex = make(model, max_batch_size=16)
        b.start()
        inputs = [[[i, i + 1]] for i in range(64)]
        results = await asyncio.gather(*(b.submit(x) for x in inputs))
        await b.drain()
        ex.shutdown()
        assert results == [[2 * i + 1] for i in range(64)]
        # While the worker is busy the rest queue up: 64 requests in far fewer model calls.
        assert len(model.calls) < 64 // 2
        assert all(len(c) <= 16 for c in model.calls)
        assert sum(obs.sizes) == 64 and len(obs.waits) == 64

    run(main)


def test_request_split_across_batches_is_answered_once_in_order() -> None:
    model = Model()

    async def main() -> None:
        b, _, ex = make(model, max_batch_size=2)
        b.start()
        out = await b.submit([[i] for i in range(7)])
        await b.drain()
        ex.shutdown()
        assert out == list(range(7))
        assert [len(c) for c in model.calls] == [2, 2, 2, 1]

    run(main)


@pytest.mark.parametrize(
    ("lengths", "budget", "expected"),
    [
        ([4, 4, 4, 4], 8, [2, 2]),  # 2 texts x 4 tokens fill 8
        ([2, 2, 8, 2], 16, [2, 2]),  # the 8-long text makes the rectangle 3 x 8 = 24 > 16
        ([10, 1, 1], 5, [1, 2]),  # a text longer than the budget still runs, alone
    ],
)
def test_token_budget_cuts_batches(lengths: list[int], budget: int, expected: list[int]) -> None:
    model = Model()

    async def main() -> None:
        b, _, ex = make(model, max_batch_tokens=budget, max_batch_size=64)
        b.start()
        await b.submit([[1] * n for n in lengths])
        await b.drain()
        ex.shutdown()

    run(main)
    assert [len(c) for c in model.calls] == expected


def test_wait_window_gathers_a_late_request() -> None:
    async def scenario(wait_s: float) -> int:
        model = Model()
        b, _, ex = make(model, max_batch_wait_s=wait_s)
        b.start()
        first = asyncio.ensure_future(b.submit([[1]]))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(b.submit([[2]]))
        assert await first == [1] and await second == [2]
        await b.drain()
        ex.shutdown()
        return len(model.calls)

    assert asyncio.run(scenario(0.5)) == 1  # held open: both in one batch
    assert asyncio.run(scenario(0.0)) == 2  # no wait: the idle worker takes the first at once


def test_full_window_is_cut_before_the_wait_ends() -> None:
    model = Model()

    async def main() -> float:
        b, _, ex = make(model, max_batch_wait_s=5.0, max_batch_size=4)
        b.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit([[i]]) for i in range(4)))
        elapsed = time.perf_counter() - t0
        await b.drain()
        ex.shutdown()
        return elapsed

    assert run(main) < 1.0
    assert [len(c) for c in model.calls] == [4]


def test_queue_full_rejects_and_counts() -> None:
    model = Model()
    model.gate = threading.Event()

    async def main() -> None:
        b, obs, ex = make(model, max_queue=4)
        b.start()
        running = asyncio.ensure_future(b.submit([[0]]))  # taken by the worker, blocks on gate
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(b.submit([[1], [2], [3]]))
        await asyncio.sleep(0)
        assert b.depth == 3
        with pytest.raises(QueueFull):
            await b.submit([[4], [5]])
        one_more = asyncio.ensure_future(b.submit([[6]]))  # exactly fits: 4 of 4
        await asyncio.sleep(0)
        assert b.depth == 4
        assert model.gate is not None
        model.gate.set()
        assert await running == [0]
        assert await queued == [1, 2, 3]
        assert await one_more == [6]
        await b.drain()
        ex.shutdown()
        assert obs.rejects == ["queue_full"]

    run(main)


def test_deadline_answers_timeout_and_drops_the_items() -> None:
    model = Model()
    model.gate = threading.Event()

    async def main() -> None:
        b, obs, ex = make(model, timeout_s=0.2)
        b.start()
        blocker = asyncio.ensure_future(b.submit([[0]]))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestTimedOut):
            await b.submit([[7], [8]])
        assert b.depth == 0  # the expired request's texts no longer count
        # The blocker, stuck in the worker past its own (earlier) deadline, timed out too.
        assert blocker.done() and isinstance(blocker.exception(), RequestTimedOut)
        assert obs.rejects == ["timeout", "timeout"]
        assert model.gate is not None
        model.gate.set()
        assert await b.submit([[9]]) == [9]
        await b.drain()
        ex.shutdown()
        # The expired texts never reached the model.
        assert [7] not in [ids for call in model.calls for ids in call]

    run(main)


def test_failing_batch_fails_only_its_requests() -> None:
    model = Model(fail_on=666)
    model.gate = threading.Event()

    async def main() -> None:
        b, _, ex = make(model, max_batch_size=2)
        b.start()
        blocker = asyncio.ensure_future(b.submit([[1]]))
        await asyncio.sleep(0.02)
        # Queued behind the blocker: batch A = (bad, mate), batch B = (ok1, ok2).
        bad = asyncio.ensure_future(b.submit([[666]]))
        mate = asyncio.ensure_future(b.submit([[5]]))
        ok = asyncio.ensure_future(b.submit([[2], [3]]))
        await asyncio.sleep(0)
        assert model.gate is not None
        model.gate.set()
        assert await blocker == [1]
        with pytest.raises(BatchFailed):
            await bad
        with pytest.raises(BatchFailed):
            await mate
        assert await ok == [2, 3]
        assert await b.submit([[4]]) == [4]
        await b.drain()
        ex.shutdown()

    run(main)


def test_cancelled_caller_does_not_break_the_batch() -> None:
    model = Model()
    model.gate = threading.Event()

    async def main() -> None:
        b, _, ex = make(model, max_batch_size=8)
        b.start()
        blocker = asyncio.ensure_future(b.submit([[1]]))
        await asyncio.sleep(0.02)
        gone = asyncio.ensure_future(b.submit([[100], [101]]))
        stays = asyncio.ensure_future(b.submit([[3]]))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        assert b.depth == 1
        assert model.gate is not None
        model.gate.set()
        assert await blocker == [1]
        assert await stays == [3]
        await b.drain()
        ex.shutdown()
        assert [100] not in [ids for call in model.calls for ids in call]

    run(main)


def test_cancel_while_in_the_running_batch() -> None:
    model = Model()
    model.gate = threading.Event()

    async def main() -> None:
        b, _, ex = make(model, max_batch_size=8)
        b.start()
        a = asyncio.ensure_future(b.submit([[1]]))
        c = asyncio.ensure_future(b.submit([[2]]))
        await asyncio.sleep(0.05)  # both in the running batch now
        a.cancel()
        assert model.gate is not None
        model.gate.set()
        assert await c == [2]
        await b.drain()
        ex.shutdown()
        assert a.cancelled()

    run(main)


def test_drain_finishes_queued_work_and_refuses_new() -> None:
    model = Model(delay_s=0.01)

    async def main() -> None:
        b, obs, ex = make(model, max_batch_size=2)
        b.start()
        pending = [asyncio.ensure_future(b.submit([[i]])) for i in range(10)]
        await asyncio.sleep(0)
        await b.drain()
        assert [p.result() for p in pending] == [[i] for i in range(10)]
        with pytest.raises(BatcherClosed):
            await b.submit([[1]])
        ex.shutdown()
        assert obs.rejects == ["draining"]

    run(main)


def test_bad_limits_are_refused() -> None:
    ex = ThreadPoolExecutor(max_workers=1)
    with pytest.raises(ValueError):
        Batcher(Model(), executor=ex, max_batch_size=0)
    with pytest.raises(ValueError):
        Batcher(Model(), executor=ex, timeout_s=0)
    ex.shutdown()


def test_check_room_refuses_before_any_work() -> None:
    model = Model()

    async def main() -> None:
        b, obs, ex = make(model, max_queue=3)
        b.start()
        b.check_room(3)  # fits
        with pytest.raises(QueueFull):
            b.check_room(4)
        assert obs.rejects == ["queue_full"] and model.calls == []
        await b.drain()
        ex.shutdown()

    run(main)


class Background:
    """Background work with `units` pending; due when idle, or under load once `overdue`."""

    def __init__(self, units: int, overdue: bool = False, fail: bool = False) -> None:
        self.units = units
        self.overdue = overdue
        self.fail = fail
        self.ran: list[tuple[bool, str]] = []  # (idle, thread)

    def background_due(self, idle: bool) -> bool:
        return self.units > 0 and (idle or self.overdue)

    def run_background(self, idle: bool) -> None:
        self.ran.append((idle, threading.current_thread().name))
        self.units -= 1
        if self.fail:
            raise RuntimeError("background boom")


def test_background_work_runs_on_the_worker_when_idle_one_unit_at_a_time() -> None:
    async def main() -> None:
        work = Background(units=3)
        model = Model()
        b, _, ex = make(model, background=work)
        b.start()
        assert await b.submit([[1, 2]]) == [3]
        while work.units:  # the idle gap after the answer drains every due unit
            await asyncio.sleep(0.001)
        assert [idle for idle, _ in work.ran] == [True, True, True]
        assert {t for _, t in work.ran} == model.threads  # the model's one worker thread
        await b.drain()
        ex.shutdown()

    run(main)


def test_background_work_under_load_waits_until_overdue_and_never_fails_a_request() -> None:
    async def main() -> None:
        for overdue in (False, True):
            work = Background(units=100, overdue=overdue, fail=True)
            model = Model(delay_s=0.01)
            b, _, ex = make(model, max_batch_size=1, background=work)
            b.start()
            # 6 single-text requests at once: batches of one, the queue never empty between them
            results = await asyncio.gather(*(b.submit([[i]]) for i in range(6)))
            assert results == [[i] for i in range(6)]
            under_load = [idle for idle, _ in work.ran if not idle]
            if overdue:  # between every two batches while texts still waited
                assert len(under_load) >= 4, work.ran
            else:  # only in idle gaps
                assert under_load == [], work.ran
            await b.drain()
            ex.shutdown()

    run(main)
