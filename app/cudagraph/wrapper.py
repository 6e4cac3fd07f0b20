"""``CUDAGraphWrapper``: capture once per padded shape, replay afterwards (vLLM's call protocol).

Protocol: the CALLER copies new data into the same static input tensors before each call. On a
hit the wrapper replays and returns the SAME output object every time (graph memory, overwritten
by the next replay), so callers copy out what they keep. On a miss it warms up and captures with
the args given, which become the graph's static inputs.

Locking: the process-wide graph lock (``lock.py``) is held around every capture, replay and
eviction, so no capture overlaps a replay. Each wrapper also has a short state lock around its
dict and counters; read-only views take only that one, so a metrics scrape never waits for a
capture. Order: graph lock, then state lock; never the other way round.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from app.cudagraph.backoff import CaptureBackoff
from app.cudagraph.capture import CaptureResult, capture_cuda, capture_mock, new_pool_handle
from app.cudagraph.context import _FORWARD_CONTEXT
from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.entry import CUDAGraphEntry
from app.cudagraph.errors import InputAddressMismatchError
from app.cudagraph.lock import _GRAPH_LOCK
from app.cudagraph.mock_graph import MockCUDAGraph
from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CUDAGraphOptions
from app.cudagraph.stats import CUDAGraphStats
from app.cudagraph.tensors import find_device, input_addresses, weak_ref_tree
from app.cudagraph.view import CachedGraphInfo

logger = logging.getLogger("app.cudagraph")


def _check_limit(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be an int >= 1{' or None' if allow_none else ''}, got {value!r}"
        )


class CUDAGraphWrapper:
    """Wraps ``runnable``; graphs it for the forward contexts whose mode is ``runtime_mode``.

    max_cached_graphs: least-recently-used graphs are evicted beyond this count.
    memory_budget_bytes: optional cap on the summed ``memory_bytes`` of the cached graphs.
    """

    def __init__(
        self,
        runnable: Callable[..., Any],
        runtime_mode: CUDAGraphMode | int,
        options: CUDAGraphOptions | None = None,
        max_cached_graphs: int = 64,
        *,
        memory_budget_bytes: int | None = None,
        name: str | None = None,
    ) -> None:
        if not callable(runnable):
            raise TypeError(f"runnable must be callable, got {type(runnable).__name__}")
        _check_limit("max_cached_graphs", max_cached_graphs)
        _check_limit("memory_budget_bytes", memory_budget_bytes, allow_none=True)
        if options is not None and not isinstance(options, CUDAGraphOptions):
            raise TypeError(f"options must be CUDAGraphOptions, got {type(options).__name__}")
        self._runnable = runnable
        self._mode = CUDAGraphMode(runtime_mode)
        # NONE never captures: such a wrapper is a pass-through with an empty (valid) view.
        self._active = self._mode.has_graphs()
        self._piecewise = self._mode is CUDAGraphMode.PIECEWISE
        self._options = options if options is not None else CUDAGraphOptions()
        self._debug = self._options.debug_check_addresses
        self._max_cached_graphs = max_cached_graphs
        self._memory_budget_bytes = memory_budget_bytes
        self.name = name if name is not None else type(runnable).__name__
        self._state = threading.Lock()
        self._entries: OrderedDict[BatchDescriptor, CUDAGraphEntry] = OrderedDict()
        self._memory_total = 0
        self._stats = CUDAGraphStats()
        self._backoff = CaptureBackoff(
            self._options.capture_retry_backoff_s, self._options.capture_retry_backoff_max_s
        )
        self._lookups = 0
        self._shared_pool: Any = None
        # Keys captured during the current prewarm session: never evicted by that session.
        self._session: set[BatchDescriptor] | None = None

    # ------------------------------------------------------------------ call path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = _FORWARD_CONTEXT.get()
        if ctx is None or ctx.mode is not self._mode or not self._active:
            return self._runnable(*args, **kwargs)
        key = ctx.relaxed if self._piecewise else ctx.descriptor
        if key is None:
            return self._runnable(*args, **kwargs)
        if ctx.prewarm:
            return self._prewarm_call(key, args, kwargs)
        with _GRAPH_LOCK:
            entry = self._entries.get(key)
            if entry is not None and self._debug:
                self._check_inputs(entry, args, kwargs)
            with self._state:
                self._lookups += 1
                self._note_lookup(key, self._lookups)
                if entry is None:
                    self._stats.misses += 1
                else:
                    self._stats.hits += 1
                    self._stats.replays += 1
                    entry.increment_replay(self._lookups)
                    self._entries.move_to_end(key)
            if entry is None:
                return self._miss(key, args, kwargs)
            entry.cudagraph.replay()
            return entry.output

    def _miss(self, key: BatchDescriptor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Called with the graph lock held, after the miss was counted."""
        with self._state:
            capture = self._capture_allowed(key)
            if not capture:
                self._stats.eager_runs += 1
        if capture:
            entry, _ = self._capture_and_admit(key, args, kwargs)
            if entry is not None:
                # A real capture executes nothing: replay once to produce this call's answer.
                entry.cudagraph.replay()
                return entry.output
            with self._state:
                self._stats.eager_runs += 1
        # Any exception here is the model failing for this input: it reaches the caller.
        return self._runnable(*args, **kwargs)

    def _prewarm_call(
        self, key: BatchDescriptor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A forward made only to capture: no threshold, no back-off, no lookup statistics."""
        with _GRAPH_LOCK:
            entry = self._entries.get(key)
            if entry is None:
                entry, _ = self._capture_and_admit(key, args, kwargs)
            if entry is None:
                return self._runnable(*args, **kwargs)
            entry.cudagraph.replay()
            return entry.output

    def _check_inputs(
        self, entry: CUDAGraphEntry, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        given = input_addresses(args, kwargs)
        if given != entry.input_addresses:
            raise InputAddressMismatchError(entry.batch_descriptor, entry.input_addresses, given)

    # ------------------------------------------------------------------ policy hooks

    def _note_lookup(self, key: BatchDescriptor, lookup: int) -> None:
        """A lookup for ``key`` (state lock held). The plain wrapper keeps no per-shape counts."""

    def _capture_allowed(self, key: BatchDescriptor) -> bool:
        """Whether a miss for ``key`` captures now (state lock held)."""
        return not self._backoff.blocked(key)

    def _select_victim(self, protect: set[BatchDescriptor]) -> BatchDescriptor | None:
        """The graph to evict next (state lock held): least recently used, never ``protect``."""
        for key in self._entries:
            if key not in protect:
                return key
        return None

    # ------------------------------------------------------------------ capture

    def _capture_and_admit(
        self, key: BatchDescriptor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[CUDAGraphEntry | None, str | None]:
        """Capture ``key`` with these args and make room for it (graph lock held).

        Returns (entry, None) on success, (None, reason) when the shape must run eagerly.
        """
        fn = functools.partial(self._runnable, *args, **kwargs)
        device = find_device(args, kwargs)
        on_cuda = device is not None and device.type == "cuda"
        options = self._options
        if options.pool_policy == "shared" and self._shared_pool is None:
            self._shared_pool = new_pool_handle(on_cuda)
        pool = self._shared_pool if options.pool_policy == "shared" else None
        start = time.perf_counter()
        try:
            result: CaptureResult
            if on_cuda:
                assert device is not None
                result = capture_cuda(
                    fn,
                    device=device,
                    warmup_iters=options.warmup_iters,
                    pool=pool,
                    freeze_gc=options.freeze_gc,
                )
            else:
                result = capture_mock(
                    fn, warmup_iters=options.warmup_iters, pool=pool, freeze_gc=options.freeze_gc
                )
        except Exception as exc:  # OOM, an op that cannot be captured, the model raising
            reason = f"capture failed: {type(exc).__name__}: {exc}"
            self._fail(key, reason, time.perf_counter() - start)
            return None, reason

        budget = self._memory_budget_bytes
        if budget is not None and result.memory_bytes > budget:
            reason = (
                f"graph needs {result.memory_bytes} bytes, more than the whole memory budget "
                f"of {budget} bytes"
            )
            self._fail(key, reason, result.seconds)
            result.graph.reset()
            del result
            self._release([], on_cuda, freed=True)
            return None, reason

        output = weak_ref_tree(result.output) if options.weak_ref_output else result.output
        entry = CUDAGraphEntry(
            batch_descriptor=key,
            cudagraph=result.graph,
            output=output,
            input_addresses=input_addresses(args, kwargs),
            capture_time=result.seconds,
            memory_bytes=result.memory_bytes,
            static_inputs=(args, kwargs),
        )
        # From here the entry holds the only reference to the output (with weak_ref_output, only
        # the graph's pool keeps it alive), so releasing a refused entry really frees its pool.
        del result, output
        protect = {key} if self._session is None else self._session | {key}
        with self._state:
            self._stats.record_capture_seconds(entry.capture_time)
            entry.captured_at_lookup = entry.last_used_lookup = self._lookups
            self._entries[key] = entry
            self._memory_total += entry.memory_bytes
            evicted, refusal = self._enforce_limits(key, protect)
            if refusal is None:
                self._stats.captures += 1
                self._backoff.forget(key)
                if self._session is not None:
                    self._session.add(key)
            else:
                self._stats.capture_failures += 1
                self._backoff.record_failure(key, refusal)
        if refusal is not None:
            entry.release()
            self._release(evicted, on_cuda, freed=True)
            logger.warning("%s: %s: %s; running it eagerly", self.name, key, refusal)
            return None, refusal
        self._release(evicted, on_cuda)
        logger.info(
            "%s: captured %s in %.3f s (%d bytes)",
            self.name,
            key,
            entry.capture_time,
            entry.memory_bytes,
        )
        return entry, None

    def _fail(self, key: BatchDescriptor, reason: str, seconds: float) -> None:
        with self._state:
            self._stats.capture_failures += 1
            self._stats.record_capture_seconds(seconds)
            delay = self._backoff.record_failure(key, reason)
        logger.warning(
            "%s: %s for %s; running it eagerly, next capture attempt in %.1f s",
            self.name,
            reason,
            key,
            delay,
        )

    def _enforce_limits(
        self, new_key: BatchDescriptor, protect: set[BatchDescriptor]
    ) -> tuple[list[CUDAGraphEntry], str | None]:
        """Evict until under the count limit and the memory budget (state lock held).

        Protected keys are never evicted. If only they are left and a limit is still exceeded,
        the new entry is taken out again (not counted as an eviction) and the reason returned.
        """
        evicted: list[CUDAGraphEntry] = []
        budget = self._memory_budget_bytes
        while True:
            over_count = len(self._entries) > self._max_cached_graphs
            over_memory = budget is not None and self._memory_total > budget
            if not (over_count or over_memory):
                return evicted, None
            victim = self._select_victim(protect)
            if victim is None:
                entry = self._entries.pop(new_key)
                self._memory_total -= entry.memory_bytes
                if over_count:
                    return evicted, (
                        f"cache full: max_cached_graphs={self._max_cached_graphs} and every "
                        "cached graph is protected"
                    )
                free = budget - self._memory_total if budget is not None else 0
                return evicted, (
                    f"memory budget full: graph needs {entry.memory_bytes} bytes, {free} bytes "
                    "of the budget free and every cached graph is protected"
                )
            entry = self._entries.pop(victim)
            self._memory_total -= entry.memory_bytes
            self._stats.evictions += 1
            evicted.append(entry)
            logger.info("%s: evicted %s (%d replays)", self.name, victim, entry.replay_count)

    def _release(
        self, evicted: Iterable[CUDAGraphEntry], on_cuda: bool, *, freed: bool = False
    ) -> None:
        """Free dropped graphs (graph lock held, state lock not held).

        per_graph: each graph had its own pool, so after ``reset()`` its segments are free and
        ``empty_cache`` hands them back to the device. shared: the pool only frees once every
        graph in it is gone, so the handle is renewed and the cache emptied only then.
        """
        released = freed
        for entry in evicted:
            entry.release()
            released = True
        if self._options.pool_policy == "shared":
            with self._state:
                empty = not self._entries
            if empty and self._shared_pool is not None:
                self._shared_pool = None
                released = True
        if released and on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ prewarm support

    @contextmanager
    def prewarm_session(self) -> Iterator[set[BatchDescriptor]]:
        """Within the block, graphs captured by this wrapper are not evicted by later captures
        of the same block (a prewarm must not evict what it just captured). Yields the set of
        keys captured so far in the session."""
        with _GRAPH_LOCK:
            outer = self._session
            if outer is None:
                self._session = set()
            try:
                assert self._session is not None
                yield self._session
            finally:
                self._session = outer

    def capture_failure_reason(self, descriptor: BatchDescriptor) -> str | None:
        """Why the last capture of ``descriptor`` failed, if it is in back-off."""
        key = descriptor.relaxed() if self._piecewise else descriptor
        with self._state:
            record = self._backoff.record(key)
            return record.reason if record is not None else None

    # ------------------------------------------------------------------ introspection

    @property
    def mode(self) -> CUDAGraphMode:
        return self._mode

    @property
    def options(self) -> CUDAGraphOptions:
        return self._options

    @property
    def max_cached_graphs(self) -> int:
        return self._max_cached_graphs

    @property
    def memory_budget_bytes(self) -> int | None:
        return self._memory_budget_bytes

    @property
    def capture_threshold(self) -> int:
        return 1

    @property
    def stats(self) -> CUDAGraphStats:
        """A copy of the counters."""
        with self._state:
            copy = CUDAGraphStats(**{k: getattr(self._stats, k) for k in _STAT_FIELDS})
            copy.capture_seconds_counts = list(self._stats.capture_seconds_counts)
            return copy

    def stats_snapshot(self) -> dict[str, Any]:
        with self._state:
            snap = self._stats.snapshot()
            snap["cached_graphs"] = len(self._entries)
            snap["memory_bytes"] = self._memory_total
            return snap

    def cached_entries(self) -> list[CachedGraphInfo]:
        """Cached graphs, smallest shape first."""
        with self._state:
            infos = [
                CachedGraphInfo(
                    descriptor=key,
                    replay_count=entry.replay_count,
                    capture_seconds=entry.capture_time,
                    memory_bytes=entry.memory_bytes,
                    last_used=entry.last_used,
                )
                for key, entry in self._entries.items()
            ]
        return sorted(infos, key=lambda info: info.descriptor.sort_key())

    def get_entry(self, descriptor: BatchDescriptor) -> CUDAGraphEntry | None:
        """The cache entry for ``descriptor`` (this wrapper's key for it), or None. For
        benchmarks and debugging: the entry's graph and output are live graph state."""
        key = descriptor.relaxed() if self._piecewise else descriptor
        with self._state:
            return self._entries.get(key)

    def get_cached_descriptors(self) -> list[BatchDescriptor]:
        """Cached keys, least recently used first."""
        with self._state:
            return list(self._entries)

    def memory_bytes(self) -> int:
        with self._state:
            return self._memory_total

    def clear(self) -> int:
        """Drop every graph (and forget capture back-offs); returns how many were dropped.
        Not counted as evictions."""
        with _GRAPH_LOCK:
            with self._state:
                dropped = list(self._entries.values())
                self._entries.clear()
                self._memory_total = 0
                self._backoff.clear()
            on_cuda = any(not isinstance(e.cudagraph, MockCUDAGraph) for e in dropped)
            self._release(dropped, on_cuda)
        return len(dropped)

    def unwrap(self) -> Callable[..., Any]:
        """The wrapped runnable."""
        return self._runnable

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the wrapper lacks: forward them to the runnable (so a
        # wrapped module still exposes .config, .dtype, ...). Guard against recursion while
        # __init__ has not yet set _runnable.
        if name.startswith("__") or "_runnable" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["_runnable"], name)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}, mode={self._mode.name}, "
            f"cached={len(self._entries)}/{self._max_cached_graphs})"
        )


_STAT_FIELDS = (
    "hits",
    "misses",
    "captures",
    "replays",
    "evictions",
    "eager_runs",
    "capture_failures",
    "capture_seconds_total",
)
