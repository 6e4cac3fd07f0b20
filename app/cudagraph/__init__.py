"""The graph manager: one ``GraphCache`` per model decides, thin executors capture and replay
(torch + stdlib only). See docs/cudagraph.md."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module it lives in, imported on first use: the torch-free
# ones (modes, options, descriptors, stats) serve the settings and the HTTP front ends, which
# never import torch.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "cache": ("GraphCache", "largest_first"),
    "context": ("ForwardContext", "cudagraph_context", "get_forward_context", "is_capturing"),
    "descriptor": ("BatchDescriptor",),
    "entry": ("CacheEntry", "PieceGraph"),
    "errors": ("InputAddressMismatchError", "ProfileError", "SizeAboveLadderError"),
    "executor": ("EAGER", "Action", "GraphForward"),
    "lock": ("graph_lock",),
    "mock_graph": ("MockCUDAGraph", "mock_graph_pool_handle"),
    "modes": ("CUDAGraphMode",),
    "options": ("CacheConfig", "CUDAGraphOptions"),
    "sizes": ("default_ladder", "get_cudagraph_sizes", "pad_to_size"),
    "stats": ("CAPTURE_SECONDS_BUCKETS", "CacheSnapshot", "CUDAGraphStats"),
    "view": ("CachedGraphInfo", "HotShape", "PrewarmProgress", "PrewarmReport"),
    "wrapper": ("AdaptiveCUDAGraphWrapper", "CUDAGraphWrapper"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ruff: noqa: F401 - these imports are the type checker's view of the lazy names above
if TYPE_CHECKING:  # the same names (a test keeps both lists equal)
    from app.cudagraph.cache import GraphCache, largest_first
    from app.cudagraph.context import (
        ForwardContext,
        cudagraph_context,
        get_forward_context,
        is_capturing,
    )
    from app.cudagraph.descriptor import BatchDescriptor
    from app.cudagraph.entry import CacheEntry, PieceGraph
    from app.cudagraph.errors import InputAddressMismatchError, ProfileError, SizeAboveLadderError
    from app.cudagraph.executor import EAGER, Action, GraphForward
    from app.cudagraph.lock import graph_lock
    from app.cudagraph.mock_graph import MockCUDAGraph, mock_graph_pool_handle
    from app.cudagraph.modes import CUDAGraphMode
    from app.cudagraph.options import CacheConfig, CUDAGraphOptions
    from app.cudagraph.sizes import default_ladder, get_cudagraph_sizes, pad_to_size
    from app.cudagraph.stats import CAPTURE_SECONDS_BUCKETS, CacheSnapshot, CUDAGraphStats
    from app.cudagraph.view import CachedGraphInfo, HotShape, PrewarmProgress, PrewarmReport
    from app.cudagraph.wrapper import AdaptiveCUDAGraphWrapper, CUDAGraphWrapper
