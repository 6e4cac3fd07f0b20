"""Prometheus metrics: the service's own (sidecar_*) and the graph cache's (cudagraph_*).

Each app owns a CollectorRegistry (not the global one), so several apps in one process (tests)
never clash. The cudagraph_* families are not stored anywhere: a custom collector reads the
graph cache view when Prometheus scrapes. Counters are exposed as counters (names end in
_total) so PromQL can take rates; label values come only from the bounded cache and ladder
(descriptor fields, ranks), never from request content.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from app.engine.batcher import REJECT_REASONS

if TYPE_CHECKING:
    from app.cudagraph import BatchDescriptor, CacheSnapshot, GraphCache
    from app.engine.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

REQUEST_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
QUEUE_WAIT_BUCKETS = (0.0001, 0.0005) + REQUEST_SECONDS_BUCKETS
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PADDING_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# (suffix-less counter name, help, its value in a snapshot)
_CACHE_COUNTERS: tuple[tuple[str, str, Callable[[CacheSnapshot], float]], ...] = (
    ("cudagraph_hits", "Graph lookups answered by replaying a cached graph.", lambda s: s.hits),
    (
        "cudagraph_misses",
        "Graph lookups with no cached graph (captured or eager).",
        lambda s: s.misses,
    ),
    ("cudagraph_replays", "Graph replays.", lambda s: s.replays),
    ("cudagraph_captures", "Graphs captured and kept.", lambda s: s.captures),
    (
        "cudagraph_capture_failures",
        "Captures that failed (error or over the memory budget); the shape then runs eagerly.",
        lambda s: s.capture_failures,
    ),
    (
        "cudagraph_evictions",
        "Graphs evicted to respect the graph count limit or memory budget.",
        lambda s: s.evictions,
    ),
    ("cudagraph_eager_runs", "Batches run eagerly (no graph used).", lambda s: s.eager_runs),
)


def _descriptor_labels(descriptor: BatchDescriptor) -> list[str]:
    """[num_tokens, num_reqs ("none" when None), uniform_decode ("true"/"false")]."""
    num_reqs = descriptor.num_reqs
    return [
        str(descriptor.num_tokens),
        "none" if num_reqs is None else str(num_reqs),
        "true" if descriptor.is_uniform_decode else "false",
    ]


class GraphCacheCollector(Collector):
    """Reads the graph cache at scrape time; before the model is loaded, zeros."""

    def __init__(self, view: Callable[[], GraphCache | None], hot_shapes_top_k: int = 10) -> None:
        self._view = view
        self._top_k = hot_shapes_top_k

    def describe(self) -> list[Metric]:
        # Names only, so registering never calls collect() (the view may not exist yet).
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(self._view())

    def _families(self, view: GraphCache | None) -> Iterator[Metric]:
        snap = view.snapshot() if view is not None else None
        hit_rate = GaugeMetricFamily(
            "cudagraph_hit_rate", "Share of graph lookups answered by replay (hits / lookups)."
        )
        hit_rate.add_metric([], snap.hit_rate if snap else 0.0)
        yield hit_rate
        for name, doc, value in _CACHE_COUNTERS:
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], float(value(snap)) if snap else 0.0)
            yield counter
        buckets = snap.capture_seconds_buckets if snap else ((float("inf"), 0),)
        hist = HistogramMetricFamily(
            "cudagraph_capture_seconds", "Wall time of each graph capture, warm-up included."
        )
        hist.add_metric(
            [],
            buckets=[(floatToGoString(bound), float(count)) for bound, count in buckets],
            sum_value=snap.capture_seconds_total if snap else 0.0,
        )
        yield hist
        cached = GaugeMetricFamily("cudagraph_cached_graphs", "Graphs in the cache now.")
        cached.add_metric([], float(snap.cached_graphs) if snap else 0.0)
        yield cached
        memory = GaugeMetricFamily(
            "cudagraph_memory_bytes", "Device memory held by the cached graphs."
        )
        memory.add_metric([], float(snap.memory_bytes) if snap else 0.0)
        yield memory

        per_graph = GaugeMetricFamily(
            "cudagraph_cached_descriptor_replays",
            "Replays of each cached graph since its capture (one series per cached shape).",
            labels=["num_tokens", "num_reqs", "uniform_decode"],
        )
        if view is not None:
            for entry in view.cached_entries():
                per_graph.add_metric(_descriptor_labels(entry.descriptor), entry.replay_count)
        yield per_graph

        hot = GaugeMetricFamily(
            "cudagraph_hot_shape_requests",
            "Lookups of the most requested shapes (rank 1 = hottest).",
            labels=["rank", "num_tokens", "num_reqs", "uniform_decode"],
        )
        if view is not None and self._top_k > 0:
            for rank, shape in enumerate(view.get_hot_shapes(self._top_k), start=1):
                hot.add_metric([str(rank), *_descriptor_labels(shape.descriptor)], shape.count)
        yield hot


class FrontEndMetrics:
    """What the HTTP side measures: requests by route and status, inference latency, texts per
    request, refusals. With several front ends each writes prometheus_client's multiprocess
    files (PROMETHEUS_MULTIPROC_DIR) and any of them exposes the sum."""

    def __init__(self, registry: CollectorRegistry, routes: Sequence[str] = ()) -> None:
        self._own = registry
        self._routes = frozenset(routes)
        self.requests = Counter(
            "sidecar_requests",
            "HTTP requests answered, by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "sidecar_request_seconds",
            "Time to answer an inference request (embed, rerank, predict), queueing included.",
            buckets=REQUEST_SECONDS_BUCKETS,
            registry=registry,
        )
        self.request_items = Histogram(
            "sidecar_request_items",
            "Texts (or rerank pairs) per inference request.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.rejected = Counter(
            "sidecar_rejected",
            "Inference requests refused with 503, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in REJECT_REASONS:  # every reason visible at 0 from the start
            self.rejected.labels(reason=reason)

    def route_label(self, path: str) -> str:
        """The route template for a path, or "other": label values never echo client paths."""
        return path if path in self._routes else "other"

    def set_routes(self, routes: Sequence[str]) -> None:
        self._routes = frozenset(routes)

    # --- observers (event loop and worker thread; prometheus_client is thread-safe) ---
    def observe_request(self, route: str, status: int, seconds: float | None) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        if seconds is not None:
            self.request_seconds.observe(seconds)

    def on_reject(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def on_request(self, items: int) -> None:
        self.request_items.observe(items)


# The engine's own families: (name, help, histogram buckets or None for the gauge).
_ENGINE_FAMILIES: dict[str, tuple[str, str, tuple[float, ...] | None]] = {
    "batch_size": (
        "sidecar_batch_size",
        "Texts per model batch (before padding to the ladder).",
        BATCH_SIZE_BUCKETS,
    ),
    "queue_depth": ("sidecar_queue_depth", "Texts waiting in the batcher queue.", None),
    "queue_wait_seconds": (
        "sidecar_queue_wait_seconds",
        "Time a request waited in the queue before its first text went into a batch.",
        QUEUE_WAIT_BUCKETS,
    ),
    "padding_ratio": (
        "sidecar_padding_ratio",
        "Share of the tokens computed per batch that were padding (0 = none).",
        PADDING_RATIO_BUCKETS,
    ),
}


class EngineMetrics:
    """What the engine measures: batches, queue, padding, and the graph cache (read at scrape
    time). Refusals are counted by the front end that answers them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        name, doc, buckets = _ENGINE_FAMILIES["batch_size"]
        self.batch_size = Histogram(name, doc, buckets=buckets or (), registry=registry)
        name, doc, _ = _ENGINE_FAMILIES["queue_depth"]
        self.queue_depth = Gauge(name, doc, registry=registry)
        name, doc, buckets = _ENGINE_FAMILIES["queue_wait_seconds"]
        self.queue_wait_seconds = Histogram(name, doc, buckets=buckets or (), registry=registry)
        name, doc, buckets = _ENGINE_FAMILIES["padding_ratio"]
        self.padding_ratio = Histogram(name, doc, buckets=buckets or (), registry=registry)

    def watch(self, engine: Engine, hot_shapes_top_k: int) -> None:
        """Read `engine`'s queue depth and graph cache whenever the registry is scraped."""
        self.queue_depth.set_function(lambda: engine.queue_depth)
        self.registry.register(GraphCacheCollector(lambda: engine.graphs, hot_shapes_top_k))

    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        self.batch_size.observe(size)
        for wait in queue_waits:
            self.queue_wait_seconds.observe(wait)

    def on_padding(self, real_tokens: int, padded_tokens: int) -> None:
        if padded_tokens > 0:
            self.padding_ratio.observe(max(0.0, 1.0 - real_tokens / padded_tokens))

    def on_reject(self, reason: str) -> None:
        pass  # the front end that answers the refusal counts it

    def on_request(self, items: int) -> None:
        pass  # counted by the front end

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ServiceMetrics(FrontEndMetrics):
    """One process serving everything: the front end's and the engine's metrics in one per-app
    registry (never the global one, so several apps in one process never clash); also the
    engine's observer."""

    def __init__(self, routes: Sequence[str] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        super().__init__(self.registry, routes)
        self.engine = EngineMetrics(self.registry)

    def on_batch(self, size: int, queue_waits: Sequence[float]) -> None:
        self.engine.on_batch(size, queue_waits)

    def on_padding(self, real_tokens: int, padded_tokens: int) -> None:
        self.engine.on_padding(real_tokens, padded_tokens)

    async def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineNotReached(Collector):
    """The engine's families at zero, for a scrape while no engine answers (before it has
    started): the same names as ever, built without metric objects (a front end's metric
    objects would write multiprocess files and show up twice)."""

    def collect(self) -> Iterator[Metric]:
        for name, doc, buckets in _ENGINE_FAMILIES.values():
            if buckets is None:
                gauge = GaugeMetricFamily(name, doc)
                gauge.add_metric([], 0.0)
                yield gauge
                continue
            hist = HistogramMetricFamily(name, doc)
            bounds = [*(floatToGoString(b) for b in buckets), "+Inf"]
            hist.add_metric([], buckets=[(b, 0.0) for b in bounds], sum_value=0.0)
            yield hist
        yield from GraphCacheCollector(lambda: None).collect()


class FrontEndExposition(FrontEndMetrics):
    """A front end among several: its own metrics go to prometheus_client's multiprocess files
    (PROMETHEUS_MULTIPROC_DIR, set by the supervisor), and a scrape shows the sum over every
    front end that ever ran (a restarted one's counts stay), then the engine's metrics, read
    from the engine process at scrape time."""

    def __init__(self, engine_text: Callable[[], Awaitable[bytes]]) -> None:
        super().__init__(CollectorRegistry(auto_describe=True))
        self._engine_text = engine_text
        self._not_reached = CollectorRegistry(auto_describe=False)
        self._not_reached.register(EngineNotReached())
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed)
        else:  # one front end alone (tests): its own registry is the whole story
            self._exposed = self._own

    async def render(self) -> bytes:
        own = generate_latest(self._exposed)
        try:
            engine = await self._engine_text()
        except Exception:  # no engine answers (not started, gone, stuck): the names at zero
            engine = generate_latest(self._not_reached)
        return own + engine
