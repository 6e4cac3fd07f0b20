"""The admin operations on the engine's one graph cache, as plain data: what `/admin/*` answers,
whether the engine runs in this process or in the engine process behind the front ends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from app.cudagraph.descriptor import BatchDescriptor
from app.engine.admission import NotReady

if TYPE_CHECKING:
    from app.cudagraph.cache import GraphCache
    from app.engine.engine import Engine


class InvalidOperation(ValueError):
    """A request the engine cannot do (the API answers 422 with `code`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _cache(engine: Engine) -> GraphCache:
    cache = engine.graphs
    if cache is None:
        raise NotReady("the model is not loaded yet")
    return cache


def prewarm_descriptors(engine: Engine, args: dict[str, Any]) -> list[BatchDescriptor]:
    """What a prewarm asks for: `shapes` ([batch_size, seq_len] pairs, padded to the ladders),
    `descriptors` ([num_tokens, num_reqs, uniform] exact ladder keys), `top_k` (the predicted
    hot shapes), or nothing for the whole configured ladder."""
    shapes, descriptors, top_k = args.get("shapes"), args.get("descriptors"), args.get("top_k")
    if shapes is None and descriptors is None and top_k is None:
        return engine.ladder_descriptors()
    if top_k is not None:
        return _cache(engine).predict_shapes(top_k)
    if shapes is not None:
        out: list[BatchDescriptor] = []
        for i, (batch_size, seq_len) in enumerate(shapes):
            try:
                out.append(engine.descriptor_for_shape(batch_size, seq_len))
            except ValueError as exc:
                raise InvalidOperation("invalid_shape", f"shapes.{i}: {exc}") from None
        return out
    cache = _cache(engine)
    ladder = {cache.key_for(d) for d in engine.ladder_descriptors()}
    out = []
    for i, (num_tokens, num_reqs, uniform) in enumerate(descriptors or []):
        try:
            descriptor = BatchDescriptor(num_tokens, num_reqs, uniform)
        except ValueError as exc:
            raise InvalidOperation("invalid_descriptor", f"descriptors.{i}: {exc}") from None
        # Keyed as lookups are: PIECEWISE only looks at the token count.
        if cache.key_for(descriptor) not in ladder:
            raise InvalidOperation(
                "invalid_descriptor",
                f"descriptors.{i}: {descriptor.label()} is not a shape of the configured "
                f"ladder ({len(ladder)} shapes; see POST /admin/prewarm with shapes)",
            )
        out.append(descriptor)
    return out


async def prewarm(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    report = await engine.prewarm(prewarm_descriptors(engine, args))
    return report.to_dict()


async def graphs(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    cache = _cache(engine)
    entries = cache.cached_entries()
    config = cache.config
    return {
        "mode": cache.mode.name,
        "max_cached_graphs": config.max_cached_graphs,
        "memory_budget_bytes": config.memory_budget_bytes,
        "capture_threshold": config.capture_threshold,
        "cached_graphs": len(entries),
        "memory_bytes": sum(e.memory_bytes for e in entries),
        "graphs": [e.to_dict() for e in entries],
    }


async def clear_graphs(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    _cache(engine)
    return {"cleared": await engine.clear_graphs()}


async def hot_shapes(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    shapes = _cache(engine).get_hot_shapes(int(args["top_k"]))
    return {"hot_shapes": [{"rank": i, **s.to_dict()} for i, s in enumerate(shapes, start=1)]}


async def stats(engine: Engine, args: dict[str, Any]) -> dict[str, Any]:
    snap = _cache(engine).snapshot()
    return {
        "mode": snap.mode,
        "hits": snap.hits,
        "misses": snap.misses,
        "hit_rate": snap.hit_rate,
        "captures": snap.captures,
        "replays": snap.replays,
        "evictions": snap.evictions,
        "eager_runs": snap.eager_runs,
        "capture_failures": snap.capture_failures,
        "capture_seconds_total": snap.capture_seconds_total,
        "cached_graphs": snap.cached_graphs,
        "memory_bytes": snap.memory_bytes,
        "pending_captures": snap.pending_captures,
        "startup_prewarm": engine.startup_report.to_dict(),
        "queue_depth": engine.queue_depth,
        "batches": engine.batches,
        "texts": engine.texts,
    }


Operation = Callable[["Engine", dict[str, Any]], Awaitable[Any]]

OPERATIONS: dict[str, Operation] = {
    "prewarm": prewarm,
    "graphs": graphs,
    "clear_graphs": clear_graphs,
    "hot_shapes": hot_shapes,
    "stats": stats,
}
