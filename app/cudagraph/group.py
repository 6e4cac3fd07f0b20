"""``CUDAGraphGroup``: one graph-cache view over the PIECEWISE piece wrappers of one model.

In PIECEWISE mode a model has N piece wrappers (one per graphed span between eager attention
calls); one logical graph per descriptor is made of N piece graphs. Every forward asks every
piece for the same relaxed descriptor, so lookup counts (hits, misses, replays, evictions, eager
runs, captures, hot shapes, predictions, the profile) are read from the lead (first) wrapper,
while what each piece costs is summed: memory, capture seconds (and their histogram: one
observation per piece capture), capture failures. clear / import fan out to every piece.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from os import PathLike
from typing import Any

from app.cudagraph.adaptive import AdaptiveCUDAGraphWrapper, largest_first
from app.cudagraph.context import cudagraph_context
from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.gc_freeze import gc_frozen
from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.profile import read_profile, write_profile
from app.cudagraph.stats import cumulative_buckets
from app.cudagraph.view import CachedGraphInfo, HotShape, PrewarmReport

_SUMMED = ("memory_bytes", "capture_seconds_total", "capture_failures")


class CUDAGraphGroup:
    """The ``GraphCacheView`` of several wrappers that form one model (lead = first)."""

    def __init__(self, wrappers: Sequence[AdaptiveCUDAGraphWrapper]) -> None:
        wrappers = list(wrappers)
        if not wrappers:
            raise ValueError("a CUDAGraphGroup needs at least one wrapper")
        for wrapper in wrappers:
            if not isinstance(wrapper, AdaptiveCUDAGraphWrapper):
                raise TypeError(
                    f"group members must be AdaptiveCUDAGraphWrapper, got {type(wrapper).__name__}"
                )
        modes = {w.mode for w in wrappers}
        if len(modes) != 1:
            raise ValueError(f"group members run different modes: {sorted(m.name for m in modes)}")
        self._wrappers = wrappers
        self._lead = wrappers[0]

    @property
    def wrappers(self) -> list[AdaptiveCUDAGraphWrapper]:
        return list(self._wrappers)

    # ------------------------------------------------------------------ configuration

    @property
    def mode(self) -> CUDAGraphMode:
        return self._lead.mode

    @property
    def max_cached_graphs(self) -> int:
        return self._lead.max_cached_graphs

    @property
    def memory_budget_bytes(self) -> int | None:
        """Sum of the pieces' budgets (None when any piece has none)."""
        budgets = [w.memory_budget_bytes for w in self._wrappers]
        if any(b is None for b in budgets):
            return None
        return sum(b for b in budgets if b is not None)

    @property
    def capture_threshold(self) -> int:
        return self._lead.capture_threshold

    # ------------------------------------------------------------------ view

    def stats_snapshot(self) -> dict[str, Any]:
        snaps = [w.stats_snapshot() for w in self._wrappers]
        out = dict(snaps[0])
        for name in _SUMMED:
            out[name] = sum(s[name] for s in snaps)
        # Sum the per-bucket counts of every piece, then re-accumulate.
        per_bucket = [0] * len(out["capture_seconds_buckets"])
        for snap in snaps:
            previous = 0
            for i, (_, cumulative) in enumerate(snap["capture_seconds_buckets"]):
                per_bucket[i] += int(cumulative) - previous
                previous = int(cumulative)
        out["capture_seconds_buckets"] = cumulative_buckets(per_bucket)
        return out

    def cached_entries(self) -> list[CachedGraphInfo]:
        """The lead's graphs, with capture seconds and memory summed over the pieces."""
        per_piece = [{i.descriptor: i for i in w.cached_entries()} for w in self._wrappers]
        out = []
        for descriptor, lead in per_piece[0].items():
            parts = [p[descriptor] for p in per_piece if descriptor in p]
            out.append(
                CachedGraphInfo(
                    descriptor=descriptor,
                    replay_count=lead.replay_count,
                    capture_seconds=sum(p.capture_seconds for p in parts),
                    memory_bytes=sum(p.memory_bytes for p in parts),
                    last_used=lead.last_used,
                )
            )
        return out

    def get_hot_shapes(self, top_k: int = 10) -> list[HotShape]:
        return self._lead.get_hot_shapes(top_k)

    def predict_shapes(self, top_k: int = 10) -> list[BatchDescriptor]:
        return self._lead.predict_shapes(top_k)

    def get_cached_descriptors(self) -> list[BatchDescriptor]:
        return self._lead.get_cached_descriptors()

    def memory_bytes(self) -> int:
        return sum(w.memory_bytes() for w in self._wrappers)

    def clear(self) -> int:
        """Clear every piece; returns the number of logical graphs (the lead's) dropped."""
        dropped = [w.clear() for w in self._wrappers]
        return dropped[0]

    def set_ladder(self, ladder: Sequence[BatchDescriptor]) -> None:
        for wrapper in self._wrappers:
            wrapper.set_ladder(ladder)

    # ------------------------------------------------------------------ profile

    def export_profile(self) -> dict[str, Any]:
        return self._lead.export_profile()

    def import_profile(self, profile: dict[str, Any]) -> int:
        restored = [w.import_profile(profile) for w in self._wrappers]
        return restored[0]

    def save_profile(self, path: str | PathLike[str]) -> None:
        write_profile(path, self.export_profile())

    def load_profile(self, path: str | PathLike[str]) -> int:
        restored = self._lead.load_profile(path)
        profile = read_profile(path)
        for wrapper in self._wrappers[1:]:
            wrapper.import_profile(profile)  # type: ignore[arg-type]
        return restored

    # ------------------------------------------------------------------ prewarm

    def prewarm(
        self,
        descriptors: Iterable[BatchDescriptor],
        run_fn: Callable[[BatchDescriptor], object],
    ) -> PrewarmReport:
        """Capture every piece for each descriptor, largest first.

        ``run_fn(descriptor)`` runs one forward of the model with dummy inputs for that shape,
        using the caller's static buffers; the group wraps it in a prewarm context so each piece
        captures regardless of its threshold and lookups are not counted. A descriptor is
        captured when every piece now holds its graph; failed (with the pieces' reasons) when a
        piece could not capture; skipped when every piece already had it, or the lead is full of
        graphs from this same prewarm.
        """
        start = time.perf_counter()
        report = PrewarmReport()
        keys: dict[BatchDescriptor, BatchDescriptor] = {}
        for descriptor in descriptors:
            keys.setdefault(self._lead.key_for(descriptor), descriptor)
        ordered = largest_first(keys)
        if not self.mode.has_graphs():
            report.skipped = ordered
            report.seconds = time.perf_counter() - start
            return report
        with ExitStack() as stack:
            stack.enter_context(gc_frozen(self._lead.options.freeze_gc))
            sessions = [stack.enter_context(w.prewarm_session()) for w in self._wrappers]
            for wrapper, session in zip(self._wrappers, sessions, strict=True):
                cached = set(wrapper.get_cached_descriptors())
                session.update(key for key in ordered if key in cached)
            for key in ordered:
                if all(key in w.get_cached_descriptors() for w in self._wrappers):
                    report.skipped.append(key)
                    continue
                if len(sessions[0]) >= self._lead.max_cached_graphs:
                    report.skipped.append(key)
                    continue
                original = keys[key]
                try:
                    with cudagraph_context(self.mode, original, prewarm=True):
                        run_fn(original)
                except Exception as exc:
                    report.failed.append((key, f"run_fn failed: {type(exc).__name__}: {exc}"))
                    continue
                missing = [
                    (i, w)
                    for i, w in enumerate(self._wrappers)
                    if key not in w.get_cached_descriptors()
                ]
                if not missing:
                    report.captured.append(key)
                    continue
                reasons = [
                    f"piece {i} ({w.name}): {w.capture_failure_reason(key) or 'not captured'}"
                    for i, w in missing
                ]
                report.failed.append((key, "; ".join(reasons)))
                # The pieces that did capture keep their graphs (a piece graph is useful on its
                # own) but without protection: later captures of this prewarm may evict them.
                for session in sessions:
                    session.discard(key)
        report.seconds = time.perf_counter() - start
        return report
