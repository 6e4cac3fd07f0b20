"""``CUDAGraphWrapper`` and ``AdaptiveCUDAGraphWrapper``: a ``GraphCache`` of one piece around any
callable (an ``nn.Module``), driven by ``cudagraph_context`` (vLLM's call protocol).

Protocol: the CALLER copies new data into the same static input tensors before each call. On a
hit the wrapper replays and returns the SAME output object every time (graph memory, overwritten
by the next replay), so callers copy out what they keep. When the cache decides to capture, the
args given become the graph's static inputs.

The two differ only in the cache they build: the plain wrapper captures on first sight and
evicts the least recently used graph; the adaptive one captures what traffic proves hot
(``capture_threshold``) and evicts the coldest graph (decayed hotness).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from app.cudagraph.cache import GraphCache, ProgressFn
from app.cudagraph.context import _FORWARD_CONTEXT
from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.executor import GraphForward
from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CacheConfig, CUDAGraphOptions, check_int
from app.cudagraph.view import HotShape, PrewarmReport

DummyFn = Callable[[BatchDescriptor], tuple[tuple[Any, ...], dict[str, Any]]]
_DEFAULTS = CacheConfig()


class CUDAGraphWrapper:
    """Wraps ``runnable``; graphs it for the forward contexts whose mode is ``runtime_mode``.

    max_cached_graphs: least-recently-used graphs are evicted beyond this count.
    memory_budget_bytes: optional cap on the summed memory of the cached graphs.
    """

    def __init__(
        self,
        runnable: Callable[..., Any],
        runtime_mode: CUDAGraphMode | int,
        options: CUDAGraphOptions | None = None,
        max_cached_graphs: int = _DEFAULTS.max_cached_graphs,
        *,
        memory_budget_bytes: int | None = None,
        name: str | None = None,
    ) -> None:
        # The seed's wrappers always keep graphs (0 is the service's "none"); the rest is
        # CacheConfig's to check.
        check_int("max_cached_graphs", max_cached_graphs, 1)
        config = CacheConfig(
            max_cached_graphs=max_cached_graphs,
            memory_budget_bytes=memory_budget_bytes,
            capture_threshold=1,
            eviction="lru",
        )
        self._setup(runnable, runtime_mode, options, config, name, None)

    def _setup(
        self,
        runnable: Callable[..., Any],
        runtime_mode: CUDAGraphMode | int,
        options: CUDAGraphOptions | None,
        config: CacheConfig,
        name: str | None,
        ladder: Sequence[BatchDescriptor] | None,
    ) -> None:
        if not callable(runnable):
            raise TypeError(f"runnable must be callable, got {type(runnable).__name__}")
        self._runnable = runnable
        self.name = name if name is not None else type(runnable).__name__
        self.cache = GraphCache(runtime_mode, config, options, ladder=ladder, name=self.name)

    # ------------------------------------------------------------------ call path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx = _FORWARD_CONTEXT.get()
        cache = self.cache
        if ctx is None or ctx.mode is not cache.mode or ctx.descriptor is None:
            return self._runnable(*args, **kwargs)
        with cache.forward(ctx.descriptor) as forward:
            out = forward(0, self._runnable, *args, **kwargs)
        if forward.refused:  # captured, but no room to keep it: answer eagerly
            return self._runnable(*args, **kwargs)
        return out

    # ------------------------------------------------------------------ prewarm

    def prewarm(
        self,
        shapes: Iterable[BatchDescriptor],
        dummy_fn: DummyFn,
        *,
        on_progress: ProgressFn | None = None,
    ) -> PrewarmReport:
        """Capture ``shapes`` now, largest first, with inputs ``dummy_fn(shape)`` (args, kwargs):
        those tensors become the graph's static inputs, so they must be the caller's static
        buffers. See ``GraphCache.prewarm``."""

        def run(descriptor: BatchDescriptor, forward: GraphForward) -> None:
            try:
                made = dummy_fn(descriptor)
            except Exception as exc:
                raise RuntimeError(f"dummy_fn failed: {type(exc).__name__}: {exc}") from exc
            if (
                not isinstance(made, tuple)
                or len(made) != 2
                or not isinstance(made[0], tuple | list)
                or not isinstance(made[1], dict)
            ):
                raise TypeError("dummy_fn failed: it must return (args: tuple, kwargs: dict)")
            forward(0, self._runnable, *made[0], **made[1])

        return self.cache.prewarm(shapes, run, on_progress=on_progress)

    # ------------------------------------------------------------------ the seed's views
    # Everything else the cache shows (snapshot, entries, profile, clear) is on ``self.cache``.

    @property
    def mode(self) -> CUDAGraphMode:
        return self.cache.mode

    def get_cached_descriptors(self) -> list[BatchDescriptor]:
        """Cached keys, least recently used first."""
        return self.cache.get_cached_descriptors()

    def get_hot_shapes(self, top_k: int = 10) -> list[HotShape]:
        """Most requested first (ties: most recent first), with counts and cache state."""
        return self.cache.get_hot_shapes(top_k)

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
        return f"{type(self).__name__}({self.cache!r})"


class AdaptiveCUDAGraphWrapper(CUDAGraphWrapper):
    """Captures a shape once it has been asked for ``capture_threshold`` times; evicts the graph
    with the lowest decayed hotness (see ``CacheConfig`` for every knob)."""

    def __init__(
        self,
        runnable: Callable[..., Any],
        runtime_mode: CUDAGraphMode | int,
        options: CUDAGraphOptions | None = None,
        max_cached_graphs: int = _DEFAULTS.max_cached_graphs,
        min_replays_to_keep: int = _DEFAULTS.min_replays_to_keep,
        capture_threshold: int = _DEFAULTS.capture_threshold,
        memory_budget_bytes: int | None = None,
        *,
        half_life_lookups: int = _DEFAULTS.half_life_lookups,
        young_lookups: int = _DEFAULTS.young_lookups,
        ladder: Sequence[BatchDescriptor] | None = None,
        max_tracked_shapes: int = _DEFAULTS.max_tracked_shapes,
        name: str | None = None,
    ) -> None:
        check_int("max_cached_graphs", max_cached_graphs, 1)
        config = CacheConfig(
            max_cached_graphs=max_cached_graphs,
            memory_budget_bytes=memory_budget_bytes,
            capture_threshold=capture_threshold,
            min_replays_to_keep=min_replays_to_keep,
            young_lookups=young_lookups,
            half_life_lookups=half_life_lookups,
            max_tracked_shapes=max_tracked_shapes,
            eviction="hotness",
        )
        self._setup(runnable, runtime_mode, options, config, name, ladder)
