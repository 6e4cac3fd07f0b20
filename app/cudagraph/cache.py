"""``GraphCache``: one per model. It decides, once per logical forward, whether to replay, capture
or run eagerly, and keeps every policy: capture threshold, back-off, hotness, prediction,
eviction under a count and a memory budget, prewarm, idle-gap captures and the profile.

An entry is one logical descriptor with a graph per piece (FULL: one, the whole model;
PIECEWISE: one per graphed span), captured in one forward all or none, charged against the one
budget and evicted together. The executors (executor.py) carry the decisions out.

With ``defer_captures`` (the engine's runner) a lookup that crosses the threshold is answered
eagerly and queued; the owner captures it with ``idle_capture`` in an idle gap, or between
batches once it has waited ``max_capture_delay_s``.

Locking: the process-wide graph lock (lock.py) is held around every forward, capture and
eviction; a short state lock guards the tables and counters, and the views take only that one.
Order: graph lock, then state lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from typing import Any

from app.cudagraph.backoff import CaptureBackoff
from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.entry import CacheEntry
from app.cudagraph.errors import ProfileError
from app.cudagraph.executor import EAGER, Action, GraphForward, GraphMemory
from app.cudagraph.gc_freeze import gc_frozen
from app.cudagraph.hotness import ShapeTracker
from app.cudagraph.lock import _GRAPH_LOCK
from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CacheConfig, CUDAGraphOptions
from app.cudagraph.prediction import predict
from app.cudagraph.profile import build_profile, parse_profile, read_profile, write_profile
from app.cudagraph.stats import CacheSnapshot, CUDAGraphStats
from app.cudagraph.view import CachedGraphInfo, HotShape, Outcome, PrewarmProgress, PrewarmReport

logger = logging.getLogger("app.cudagraph")

# run(descriptor, forward): one forward of the model for ``descriptor`` with dummy inputs in the
# caller's static buffers, every piece called through ``forward``.
RunFn = Callable[[BatchDescriptor, GraphForward], object]
ProgressFn = Callable[[PrewarmProgress], None]


def largest_first(descriptors: Iterable[BatchDescriptor]) -> list[BatchDescriptor]:
    """Distinct descriptors, largest first (smaller graphs can then reuse the largest one's
    memory in a shared pool, and the biggest, likeliest-to-fail one goes first)."""
    return sorted(set(descriptors), key=lambda d: d.sort_key(), reverse=True)


class GraphCache:
    """See the module docstring. ``pieces``: graphs per descriptor. ``ladder``: the padded shapes
    the owner can produce (for prediction; without it neighbours double and halve)."""

    def __init__(
        self,
        mode: CUDAGraphMode | int,
        config: CacheConfig | None = None,
        options: CUDAGraphOptions | None = None,
        *,
        pieces: int = 1,
        ladder: Sequence[BatchDescriptor] | None = None,
        defer_captures: bool = False,
        name: str = "graphs",
    ) -> None:
        if isinstance(pieces, bool) or not isinstance(pieces, int) or pieces < 1:
            raise ValueError(f"pieces must be an int >= 1, got {pieces!r}")
        if config is not None and not isinstance(config, CacheConfig):
            raise TypeError(f"config must be CacheConfig, got {type(config).__name__}")
        if options is not None and not isinstance(options, CUDAGraphOptions):
            raise TypeError(f"options must be CUDAGraphOptions, got {type(options).__name__}")
        # Fixed for the cache's life (read-only by convention).
        self.mode = CUDAGraphMode(mode)
        self.config = config if config is not None else CacheConfig()
        self.options = options if options is not None else CUDAGraphOptions()
        self.pieces = pieces
        self._defer = defer_captures
        self.name = name
        self._state = threading.Lock()
        self._entries: OrderedDict[BatchDescriptor, CacheEntry] = OrderedDict()
        self._memory_total = 0
        self._stats = CUDAGraphStats()
        self._backoff = CaptureBackoff(
            self.options.capture_retry_backoff_s, self.options.capture_retry_backoff_max_s
        )
        self._tracker = ShapeTracker(self.config.half_life_lookups, self.config.max_tracked_shapes)
        self._lookups = 0
        self._pending: dict[BatchDescriptor, float] = {}  # key -> when it crossed the threshold
        self._predicted_tried: set[BatchDescriptor] = set()  # since room last changed
        self._memory = GraphMemory(self.options.pool_policy)
        self._session: set[BatchDescriptor] | None = None  # a bulk prewarm's keys: never evicted
        self._ladder: list[BatchDescriptor] | None = None
        if ladder is not None:
            self.set_ladder(ladder)

    # ------------------------------------------------------------------ configuration

    def key_for(self, descriptor: BatchDescriptor) -> BatchDescriptor:
        """The cache key of ``descriptor``: PIECEWISE graphs only depend on the token count."""
        return descriptor.relaxed() if self.mode is CUDAGraphMode.PIECEWISE else descriptor

    def set_ladder(self, ladder: Sequence[BatchDescriptor]) -> None:
        shapes = []
        for item in ladder:
            if not isinstance(item, BatchDescriptor):
                raise TypeError(f"ladder items must be BatchDescriptor, got {type(item).__name__}")
            shapes.append(self.key_for(item))
        with self._state:
            self._ladder = sorted(set(shapes), key=lambda d: d.sort_key())

    # ------------------------------------------------------------------ the forward path

    @contextmanager
    def forward(self, descriptor: BatchDescriptor | None) -> Iterator[GraphForward]:
        """Decide one forward for ``descriptor`` (one lookup) and run it under the graph lock.
        The caller calls every piece through the yielded ``GraphForward`` and copies out what it
        keeps inside the block. After an inline capture the graphs are admitted on exit; if
        admission refuses them, ``forward.refused`` is set (the outputs were theirs)."""
        with _GRAPH_LOCK:
            fwd = self._decide(descriptor)
            try:
                yield fwd
            except BaseException:
                fwd.release_captured()
                if fwd.action is Action.CAPTURE and fwd.failure is not None:
                    # The capture failed and the eager fallback raised too: still count the
                    # failure and start the back-off, or every retry would capture again.
                    assert fwd.descriptor is not None
                    self._fail(fwd.descriptor, fwd.failure, fwd.seconds, traffic=True)
                raise
            if fwd.action is Action.CAPTURE:
                self._commit(fwd, traffic=True)

    def _decide(self, descriptor: BatchDescriptor | None) -> GraphForward:
        if descriptor is None or not self.mode.has_graphs():
            return EAGER
        key = self.key_for(descriptor)
        with self._state:
            self._lookups += 1
            lookup = self._lookups
            self._tracker.observe(key, lookup, self._entries)
            entry = self._entries.get(key)
            stats = self._stats
            if entry is not None:
                stats.hits += 1
                stats.replays += 1
                entry.touch(lookup)
                self._entries.move_to_end(key)
                return GraphForward(Action.REPLAY, key, entry, options=self.options)
            stats.misses += 1
            allowed = self._capture_allowed(key)
            if not allowed or self._defer:
                if allowed:  # answered eagerly now, captured in the owner's next idle gap
                    self._pending.setdefault(key, time.monotonic())
                stats.eager_runs += 1
                return EAGER
        return self._capture_forward(key)

    def _capture_allowed(self, key: BatchDescriptor) -> bool:
        """State lock held."""
        return (
            self.config.max_cached_graphs > 0
            and self._tracker.count(key) >= self.config.capture_threshold
            and not self._backoff.blocked(key)
        )

    def _capture_forward(self, key: BatchDescriptor) -> GraphForward:
        return GraphForward(
            Action.CAPTURE,
            key,
            num_pieces=self.pieces,
            options=self.options,
            memory=self._memory,
        )

    # ------------------------------------------------------------------ admission

    def _commit(
        self, fwd: GraphForward, *, traffic: bool = False, evict: bool = True
    ) -> str | None:
        """Admit what a CAPTURE forward captured, making room for it (graph lock held). Returns
        None, or why the descriptor stays eager (then nothing of it is kept). ``evict=False``
        (a predicted shape) never makes room: no room, and it is quietly dropped."""
        key = fwd.descriptor
        assert key is not None
        entry = fwd.take_entry()
        budget = self.config.memory_budget_bytes
        if entry is not None and budget is not None and entry.memory_bytes > budget:
            fwd.failure = (
                f"graph needs {entry.memory_bytes} bytes, more than the whole memory budget "
                f"of {budget} bytes"
            )
            entry.release()
            entry = None
        if entry is None:
            assert fwd.failure is not None
            self._memory.release([], cache_empty=False, freed=True)
            self._fail(key, fwd.failure, fwd.seconds, traffic=traffic)
            return fwd.failure
        with self._state:
            self._stats.record_capture_seconds(fwd.seconds)
            entry.captured_at_lookup = entry.last_used_lookup = self._lookups
            self._entries[key] = entry
            self._memory_total += entry.memory_bytes
            protect = {key} | (self._session or set()) | (set() if evict else set(self._entries))
            evicted, refusal = self._enforce_limits(key, protect)
            self._pending.pop(key, None)
            if refusal is None:
                self._stats.captures += 1
                self._backoff.forget(key)
                if self._session is not None:
                    self._session.add(key)
            elif evict:
                self._stats.capture_failures += 1
                self._backoff.record_failure(key, refusal)
            self._stats.eager_runs += traffic and refusal is not None
            if evicted:
                self._predicted_tried.clear()  # room has changed
            empty = not self._entries
        if refusal is not None:
            fwd.refused, fwd.failure = True, refusal
            evicted.append(entry)
        self._memory.release(evicted, cache_empty=empty)
        if refusal is not None:
            level = logging.WARNING if evict else logging.DEBUG
            logger.log(level, "%s: %s: %s; running it eagerly", self.name, key.label(), refusal)
            return refusal
        logger.info(
            "%s: captured %s in %.3f s (%d bytes)",
            self.name,
            key.label(),
            entry.capture_seconds,
            entry.memory_bytes,
        )
        return None

    def _fail(self, key: BatchDescriptor, reason: str, seconds: float, *, traffic: bool) -> None:
        with self._state:
            self._stats.capture_failures += 1
            self._stats.record_capture_seconds(seconds)
            if traffic:
                self._stats.eager_runs += 1
            self._pending.pop(key, None)
            delay = self._backoff.record_failure(key, reason)
        logger.warning(
            "%s: %s for %s; running it eagerly, next capture attempt in %.1f s",
            self.name,
            reason,
            key.label(),
            delay,
        )

    def _enforce_limits(
        self, new_key: BatchDescriptor, protect: set[BatchDescriptor]
    ) -> tuple[list[CacheEntry], str | None]:
        """Evict until under the count limit and the memory budget (state lock held). When only
        protected graphs are left and a limit is still exceeded, the new entry is taken out again
        (not an eviction) and the reason returned."""
        evicted: list[CacheEntry] = []
        limit, budget = self.config.max_cached_graphs, self.config.memory_budget_bytes
        while True:
            over_count = len(self._entries) > limit
            over_memory = budget is not None and self._memory_total > budget
            if not (over_count or over_memory):
                return evicted, None
            victim = self._select_victim(protect)
            if victim is None:
                entry = self._entries.pop(new_key)
                self._memory_total -= entry.memory_bytes
                if over_count:
                    return evicted, (
                        f"cache full: max_cached_graphs={limit} and every cached graph is protected"
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
            logger.info(
                "%s: evicted %s (%d replays)", self.name, victim.label(), entry.replay_count
            )

    def _select_victim(self, protect: set[BatchDescriptor]) -> BatchDescriptor | None:
        """The graph to evict next (state lock held), never one in ``protect``. "lru": least
        recently used. "hotness": lowest decayed score, ties least recently used; young graphs
        with few replays are spared while any other candidate exists."""
        candidates = [key for key in self._entries if key not in protect]
        if not candidates or self.config.eviction == "lru":
            return candidates[0] if candidates else None
        lookup, config, entries = self._lookups, self.config, self._entries
        seasoned = [
            key
            for key in candidates
            if entries[key].replay_count >= config.min_replays_to_keep
            or lookup - entries[key].captured_at_lookup >= config.young_lookups
        ]
        return min(
            seasoned or candidates,
            key=lambda key: (self._tracker.score(key, lookup), entries[key].last_used_lookup),
        )

    # ------------------------------------------------------------------ capturing on request

    def _capture(
        self,
        key: BatchDescriptor,
        original: BatchDescriptor,
        run: RunFn,
        *,
        evict: bool = True,
    ) -> GraphForward:
        """Capture ``key`` with one dummy forward ``run(original, forward)`` (graph lock held);
        the forward's ``failure`` says why nothing was kept, ``refused`` that it was no room."""
        fwd = self._capture_forward(key)
        try:
            run(original, fwd)
        except Exception as exc:
            fwd.release_captured()
            fwd.failure = f"dummy forward failed: {type(exc).__name__}: {exc}"
        self._commit(fwd, evict=evict)
        return fwd

    def prewarm(
        self,
        descriptors: Iterable[BatchDescriptor],
        run: RunFn,
        *,
        on_progress: ProgressFn | None = None,
    ) -> PrewarmReport:
        """Capture ``descriptors`` now, largest first, each with one ``run(descriptor, forward)``.

        Lookups are not counted (hot-shape statistics stay traffic's). Already cached: skipped;
        no room left under max_cached_graphs without evicting this prewarm's own graphs:
        skipped; a capture that fails or a graph over the memory budget: failed, with the reason
        (the shape stays eager until its back-off passes). Other cached graphs may be evicted to
        make room; the requested ones (captured now or already cached) are not.
        """
        start = time.perf_counter()
        report = PrewarmReport()
        originals: dict[BatchDescriptor, BatchDescriptor] = {}
        for descriptor in descriptors:
            if not isinstance(descriptor, BatchDescriptor):
                raise TypeError(
                    f"prewarm takes BatchDescriptor items, got {type(descriptor).__name__}"
                )
            originals.setdefault(self.key_for(descriptor), descriptor)
        ordered = largest_first(originals)
        if not self.mode.has_graphs() or self.config.max_cached_graphs == 0:
            report.skipped = ordered
            report.seconds = time.perf_counter() - start
            return report
        with gc_frozen(self.options.freeze_gc), _GRAPH_LOCK:
            # The prewarm's session: what it captures or finds cached, never evicted by it.
            with self._state:
                self._session = {key for key in ordered if key in self._entries}
            try:
                for index, key in enumerate(ordered, start=1):
                    step = time.perf_counter()
                    outcome, reason = self._prewarm_one(key, originals[key], run, report)
                    if on_progress is not None:
                        seconds = time.perf_counter() - step
                        on_progress(
                            PrewarmProgress(index, len(ordered), key, outcome, seconds, reason)
                        )
            finally:
                self._session = None
        report.seconds = time.perf_counter() - start
        logger.info(
            "%s: prewarm captured %d, skipped %d, failed %d in %.2f s",
            self.name,
            len(report.captured),
            len(report.skipped),
            len(report.failed),
            report.seconds,
        )
        return report

    def _prewarm_one(
        self, key: BatchDescriptor, original: BatchDescriptor, run: RunFn, report: PrewarmReport
    ) -> tuple[Outcome, str | None]:
        assert self._session is not None
        if key in self._entries:
            report.skipped.append(key)
            return "skipped", None
        if len(self._session) >= self.config.max_cached_graphs:
            report.skipped.append(key)
            return "skipped", f"max_cached_graphs={self.config.max_cached_graphs} reached"
        reason = self._capture(key, original, run).failure
        if reason is None:
            report.captured.append(key)
            return "captured", None
        report.failed.append((key, reason))
        return "failed", reason

    # ------------------------------------------------------------------ idle-gap captures

    def idle_work_due(self, idle: bool) -> bool:
        """Whether ``idle_capture`` has something to do now. ``idle``: nothing is waiting to be
        served. Cheap (state lock only): the owner calls it between batches."""
        if self.config.max_cached_graphs == 0 or not self.mode.has_graphs():
            return False
        with self._state:
            if self._pending:
                oldest = min(self._pending.values())
                return idle or time.monotonic() - oldest >= self.config.max_capture_delay_s
        return idle and self._next_predicted() is not None

    def idle_capture(self, run: RunFn, idle: bool = True) -> PrewarmProgress | None:
        """Capture one shape, if one is due: the longest-waiting deferred capture, else (when
        ``idle``) a predicted shape that fits without evicting anything. None when nothing is
        due."""
        with _GRAPH_LOCK:
            with self._state:
                due = sorted(self._pending.items(), key=lambda kv: kv[1])
                key: BatchDescriptor | None = None
                if due and (
                    idle or time.monotonic() - due[0][1] >= self.config.max_capture_delay_s
                ):
                    key = due[0][0]
            predicted = key is None
            if predicted:
                key = self._next_predicted() if idle else None
                if key is None:
                    return None
                self._predicted_tried.add(key)
            assert key is not None
            start = time.perf_counter()
            with gc_frozen(self.options.freeze_gc):
                fwd = self._capture(key, key, run, evict=not predicted)
        # A predicted shape the cache had no room for is skipped; anything else is a failure.
        outcome: Outcome = (
            "captured" if fwd.failure is None else "skipped" if fwd.refused else "failed"
        )
        return PrewarmProgress(1, 1, key, outcome, time.perf_counter() - start, fwd.failure)

    def _next_predicted(self) -> BatchDescriptor | None:
        """A predicted shape worth capturing in an idle gap while there is room, or None."""
        top_k = self.config.idle_prewarm_top_k
        if top_k == 0:
            return None
        with self._state:
            budget = self.config.memory_budget_bytes
            if len(self._entries) >= self.config.max_cached_graphs or (
                budget is not None and self._memory_total >= budget
            ):
                return None
            tried = set(self._predicted_tried)
        for key in self.predict_shapes(top_k):
            if key not in tried:
                return key
        return None

    # ------------------------------------------------------------------ views (state lock only)

    def snapshot(self) -> CacheSnapshot:
        with self._state:
            s = self._stats
            return CacheSnapshot(
                mode=self.mode.name,
                hits=s.hits,
                misses=s.misses,
                hit_rate=s.hit_rate(),
                captures=s.captures,
                replays=s.replays,
                evictions=s.evictions,
                eager_runs=s.eager_runs,
                capture_failures=s.capture_failures,
                capture_seconds_total=s.capture_seconds_total,
                capture_seconds_buckets=s.cumulative_buckets(),
                cached_graphs=len(self._entries),
                memory_bytes=self._memory_total,
                pending_captures=len(self._pending),
                max_cached_graphs=self.config.max_cached_graphs,
                memory_budget_bytes=self.config.memory_budget_bytes,
                capture_threshold=self.config.capture_threshold,
            )

    def cached_entries(self) -> list[CachedGraphInfo]:
        """Cached graphs, smallest shape first."""
        with self._state:
            infos = [
                CachedGraphInfo(
                    descriptor=key,
                    replay_count=entry.replay_count,
                    capture_seconds=entry.capture_seconds,
                    memory_bytes=entry.memory_bytes,
                    last_used=entry.last_used,
                )
                for key, entry in self._entries.items()
            ]
        return sorted(infos, key=lambda info: info.descriptor.sort_key())

    def get_cached_descriptors(self) -> list[BatchDescriptor]:
        """Cached keys, least recently used first."""
        with self._state:
            return list(self._entries)

    def entry_for(self, descriptor: BatchDescriptor) -> CacheEntry | None:
        """The entry of ``descriptor`` (live graph state: for tests and debugging)."""
        with self._state:
            return self._entries.get(self.key_for(descriptor))

    def memory_bytes(self) -> int:
        with self._state:
            return self._memory_total

    def pending_captures(self) -> list[BatchDescriptor]:
        """Deferred captures waiting for an idle gap, oldest first."""
        with self._state:
            return [key for key, _ in sorted(self._pending.items(), key=lambda kv: kv[1])]

    def capture_failure_reason(self, descriptor: BatchDescriptor) -> str | None:
        """Why the last capture of ``descriptor`` failed, if it is in back-off."""
        with self._state:
            record = self._backoff.record(self.key_for(descriptor))
            return record.reason if record is not None else None

    def get_hot_shapes(self, top_k: int = 10) -> list[HotShape]:
        """Most requested first (ties: most recent first), with counts and cache state."""
        with self._state:
            ranked = self._tracker.hottest()[: max(0, top_k)]
            return [HotShape(key, count, key in self._entries) for key, count in ranked]

    def predict_shapes(self, top_k: int = 10) -> list[BatchDescriptor]:
        """Shapes worth prewarming: hot ones without a graph, then ladder neighbours of hot ones
        (see ``prediction.py``)."""
        with self._state:
            hot = [key for key, _ in self._tracker.hottest()]
            cached = set(self._entries)
            blocked = self._backoff.blocked_keys()
            ladder = self._ladder
        return predict(hot, cached, blocked, ladder, top_k)

    # ------------------------------------------------------------------ maintenance

    def clear(self) -> int:
        """Drop every graph, deferred capture and back-off; returns how many graphs were
        dropped. Not counted as evictions."""
        with _GRAPH_LOCK:
            with self._state:
                dropped = list(self._entries.values())
                self._entries.clear()
                self._memory_total = 0
                self._backoff.clear()
                self._pending.clear()
                self._predicted_tried.clear()
            self._memory.release(dropped, cache_empty=True)
        return len(dropped)

    # ------------------------------------------------------------------ profile

    def export_profile(self) -> dict[str, Any]:
        """The hot-shape profile (JSON-serialisable, see ``profile.py``)."""
        with self._state:
            shapes = [(key, count, key in self._entries) for key, count in self._tracker.hottest()]
        return build_profile(self.mode, shapes)

    def import_profile(self, profile: dict[str, Any]) -> int:
        """Restore shape counts; returns how many distinct shapes it restored. Shapes whose count
        reaches the threshold are then captured on first sight (or by a prewarm)."""
        merged: dict[BatchDescriptor, int] = {}
        for descriptor, count in parse_profile(profile, self.mode):
            key = self.key_for(descriptor)
            merged[key] = merged.get(key, 0) + count
        with self._state:
            for key, count in merged.items():
                self._tracker.restore(key, count, self._lookups, self._entries)
        return len(merged)

    def save_profile(self, path: str | PathLike[str]) -> None:
        write_profile(path, self.export_profile())

    def load_profile(self, path: str | PathLike[str]) -> int:
        """Import a profile file; ``ProfileError`` names the file and the problem."""
        try:
            return self.import_profile(read_profile(path))  # type: ignore[arg-type]
        except ProfileError as exc:
            if str(path) in str(exc):
                raise
            raise ProfileError(f"profile {path}: {exc}") from exc
