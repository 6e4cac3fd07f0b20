"""The graph manager: one ``GraphCache`` per model decides, thin executors capture and replay
(torch + stdlib only). See docs/cudagraph.md."""

from __future__ import annotations

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

__all__ = [
    "CAPTURE_SECONDS_BUCKETS",
    "EAGER",
    "Action",
    "AdaptiveCUDAGraphWrapper",
    "BatchDescriptor",
    "CUDAGraphMode",
    "CUDAGraphOptions",
    "CUDAGraphStats",
    "CUDAGraphWrapper",
    "CacheConfig",
    "CacheEntry",
    "CacheSnapshot",
    "CachedGraphInfo",
    "ForwardContext",
    "GraphCache",
    "GraphForward",
    "HotShape",
    "InputAddressMismatchError",
    "MockCUDAGraph",
    "PieceGraph",
    "PrewarmProgress",
    "PrewarmReport",
    "ProfileError",
    "SizeAboveLadderError",
    "cudagraph_context",
    "default_ladder",
    "get_cudagraph_sizes",
    "get_forward_context",
    "graph_lock",
    "is_capturing",
    "largest_first",
    "mock_graph_pool_handle",
    "pad_to_size",
]
