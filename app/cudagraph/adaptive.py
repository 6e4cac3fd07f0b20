"""``AdaptiveCUDAGraphWrapper``: capture what traffic proves hot, evict what has gone cold.

On top of ``CUDAGraphWrapper``:
- every lookup is counted per descriptor (``hotness.ShapeTracker``: raw count + decayed score);
- a shape is captured only once it has been asked for ``capture_threshold`` times (1 = first
  sight), and runs eagerly until then;
- eviction (count limit or memory budget) takes the cached graph with the lowest decayed score
  (frequency with recency decay, half-life in lookups), ties to the least recently used. Graphs
  that are *young* (captured fewer than ``young_lookups`` lookups ago) and have fewer than
  ``min_replays_to_keep`` replays are spared while any other candidate exists; when every
  candidate is young the least valuable is evicted anyway, so the cache never locks up. The
  graph just captured is never its own victim;
- ``get_hot_shapes``, ``predict_shapes`` (``prediction.py``), ``prewarm``, and the hot-shape
  profile (``profile.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from os import PathLike
from typing import Any

from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.errors import ProfileError
from app.cudagraph.gc_freeze import gc_frozen
from app.cudagraph.hotness import ShapeTracker
from app.cudagraph.lock import _GRAPH_LOCK
from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CUDAGraphOptions
from app.cudagraph.prediction import predict
from app.cudagraph.profile import build_profile, parse_profile, read_profile, write_profile
from app.cudagraph.view import HotShape, PrewarmReport
from app.cudagraph.wrapper import CUDAGraphWrapper, logger

DummyFn = Callable[[BatchDescriptor], tuple[tuple[Any, ...], dict[str, Any]]]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def largest_first(descriptors: Iterable[BatchDescriptor]) -> list[BatchDescriptor]:
    """Distinct descriptors, largest first (capture order: smaller graphs can then reuse the
    largest one's memory in a shared pool, and the biggest, likeliest-to-fail one goes first)."""
    return sorted(set(descriptors), key=lambda d: d.sort_key(), reverse=True)


class AdaptiveCUDAGraphWrapper(CUDAGraphWrapper):
    """See the module docstring. Extra keyword arguments:

    half_life_lookups: lookups after which a shape's eviction score has halved.
    young_lookups: a graph captured fewer than this many lookups ago is "young".
    ladder: the padded shapes the caller can produce (for ``predict_shapes``); without it,
        neighbours are derived by doubling/halving the token count.
    max_tracked_shapes: bound on the per-shape demand table.
    """

    def __init__(
        self,
        runnable: Callable[..., Any],
        runtime_mode: CUDAGraphMode | int,
        options: CUDAGraphOptions | None = None,
        max_cached_graphs: int = 32,
        min_replays_to_keep: int = 2,
        capture_threshold: int = 1,
        memory_budget_bytes: int | None = None,
        *,
        half_life_lookups: int = 1000,
        young_lookups: int = 256,
        ladder: Sequence[BatchDescriptor] | None = None,
        max_tracked_shapes: int = 1024,
        name: str | None = None,
    ) -> None:
        super().__init__(
            runnable,
            runtime_mode,
            options,
            max_cached_graphs,
            memory_budget_bytes=memory_budget_bytes,
            name=name,
        )
        self._min_replays_to_keep = _check_int("min_replays_to_keep", min_replays_to_keep, 0)
        self._capture_threshold = _check_int("capture_threshold", capture_threshold, 1)
        self._young_lookups = _check_int("young_lookups", young_lookups, 0)
        _check_int("half_life_lookups", half_life_lookups, 1)
        _check_int("max_tracked_shapes", max_tracked_shapes, 1)
        self._tracker = ShapeTracker(half_life_lookups, max_tracked_shapes)
        self._ladder: list[BatchDescriptor] | None = None
        if ladder is not None:
            self.set_ladder(ladder)

    # ------------------------------------------------------------------ policy hooks

    def key_for(self, descriptor: BatchDescriptor) -> BatchDescriptor:
        """The cache key this wrapper uses for ``descriptor`` (PIECEWISE: relaxed)."""
        return descriptor.relaxed() if self._piecewise else descriptor

    def _note_lookup(self, key: BatchDescriptor, lookup: int) -> None:
        self._tracker.observe(key, lookup, self._entries)

    def _capture_allowed(self, key: BatchDescriptor) -> bool:
        return self._tracker.count(key) >= self._capture_threshold and not self._backoff.blocked(
            key
        )

    def _select_victim(self, protect: set[BatchDescriptor]) -> BatchDescriptor | None:
        lookup = self._lookups
        candidates = [key for key in self._entries if key not in protect]
        if not candidates:
            return None
        seasoned = [
            key
            for key in candidates
            if self._entries[key].replay_count >= self._min_replays_to_keep
            or lookup - self._entries[key].captured_at_lookup >= self._young_lookups
        ]
        pool = seasoned or candidates
        return min(
            pool,
            key=lambda key: (
                self._tracker.score(key, lookup),
                self._entries[key].last_used_lookup,
            ),
        )

    # ------------------------------------------------------------------ configuration

    @property
    def capture_threshold(self) -> int:
        return self._capture_threshold

    @property
    def min_replays_to_keep(self) -> int:
        return self._min_replays_to_keep

    def set_ladder(self, ladder: Sequence[BatchDescriptor]) -> None:
        """The shapes the caller can produce (keys for this mode are derived: PIECEWISE relaxes
        them)."""
        shapes = []
        for item in ladder:
            if not isinstance(item, BatchDescriptor):
                raise TypeError(f"ladder items must be BatchDescriptor, got {type(item).__name__}")
            shapes.append(self.key_for(item))
        with self._state:
            self._ladder = sorted(set(shapes), key=lambda d: d.sort_key())

    # ------------------------------------------------------------------ hot shapes

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

    # ------------------------------------------------------------------ prewarm

    def prewarm(self, descriptors: Iterable[BatchDescriptor], dummy_fn: DummyFn) -> PrewarmReport:
        """Capture ``descriptors`` now, largest first, with inputs ``dummy_fn(descriptor)``.

        ``dummy_fn`` returns (args, kwargs) for the runnable; those tensors become the graph's
        static inputs, so they must be the caller's static buffers (or views of them). Lookups
        are not counted (hot-shape statistics stay traffic's). Already cached: skipped; no room
        left under max_cached_graphs without evicting this prewarm's own graphs: skipped; a
        capture that fails or a graph over the memory budget: failed, with the reason (and the
        shape stays eager until its back-off passes). Other cached graphs may be evicted to
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
        if not self._active:
            report.skipped = ordered
            report.seconds = time.perf_counter() - start
            return report
        with gc_frozen(self._options.freeze_gc), self.prewarm_session() as session:
            with self._state:
                # Requested shapes that are already cached belong to this prewarm too: they are
                # protected from eviction by its later captures.
                session.update(key for key in ordered if key in self._entries)
            for key in ordered:
                with _GRAPH_LOCK:
                    if key in self._entries:
                        report.skipped.append(key)
                        continue
                    if len(session) >= self._max_cached_graphs:
                        logger.info(
                            "%s: prewarm skips %s: max_cached_graphs=%d reached",
                            self.name,
                            key,
                            self._max_cached_graphs,
                        )
                        report.skipped.append(key)
                        continue
                    try:
                        args, kwargs = self._dummy_inputs(dummy_fn, originals[key])
                    except Exception as exc:
                        report.failed.append((key, f"dummy_fn failed: {type(exc).__name__}: {exc}"))
                        continue
                    entry, reason = self._capture_and_admit(key, args, kwargs)
                    if entry is None:
                        report.failed.append((key, reason or "capture failed"))
                    else:
                        report.captured.append(key)
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

    @staticmethod
    def _dummy_inputs(
        dummy_fn: DummyFn, descriptor: BatchDescriptor
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        made = dummy_fn(descriptor)
        if (
            not isinstance(made, tuple)
            or len(made) != 2
            or not isinstance(made[0], tuple | list)
            or not isinstance(made[1], dict)
        ):
            raise TypeError("dummy_fn must return (args: tuple, kwargs: dict)")
        return tuple(made[0]), dict(made[1])

    # ------------------------------------------------------------------ profile

    def export_profile(self) -> dict[str, Any]:
        """The hot-shape profile (JSON-serialisable, see ``profile.py``)."""
        with self._state:
            shapes = [(key, count, key in self._entries) for key, count in self._tracker.hottest()]
        return build_profile(self._mode, shapes)

    def import_profile(self, profile: dict[str, Any]) -> int:
        """Restore shape counts from a profile; returns how many distinct shapes it restored.
        Shapes whose count reaches the threshold are then captured on first sight (or by a
        prewarm of ``predict_shapes``/``get_hot_shapes``)."""
        parsed = parse_profile(profile, self._mode)
        merged: dict[BatchDescriptor, int] = {}
        for descriptor, count in parsed:
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
