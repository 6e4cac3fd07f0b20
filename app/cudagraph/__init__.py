"""The graph manager: capture, replay and an adaptive graph cache (torch + stdlib only).

See docs/cudagraph.md for the concepts and /work/contracts.md (section A) for the interface.
"""

from __future__ import annotations

from app.cudagraph.adaptive import AdaptiveCUDAGraphWrapper
from app.cudagraph.context import (
    ForwardContext,
    cudagraph_context,
    get_forward_context,
    is_capturing,
)
from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.entry import CUDAGraphEntry
from app.cudagraph.errors import InputAddressMismatchError, ProfileError, SizeAboveLadderError
from app.cudagraph.group import CUDAGraphGroup
from app.cudagraph.lock import graph_lock
from app.cudagraph.mock_graph import MockCUDAGraph, mock_graph_pool_handle
from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CUDAGraphOptions
from app.cudagraph.sizes import default_ladder, get_cudagraph_sizes, pad_to_size
from app.cudagraph.stats import CAPTURE_SECONDS_BUCKETS, CUDAGraphStats
from app.cudagraph.view import CachedGraphInfo, GraphCacheView, HotShape, PrewarmReport
from app.cudagraph.wrapper import CUDAGraphWrapper

__all__ = [
    "CAPTURE_SECONDS_BUCKETS",
    "AdaptiveCUDAGraphWrapper",
    "BatchDescriptor",
    "CUDAGraphEntry",
    "CUDAGraphGroup",
    "CUDAGraphMode",
    "CUDAGraphOptions",
    "CUDAGraphStats",
    "CUDAGraphWrapper",
    "CachedGraphInfo",
    "ForwardContext",
    "GraphCacheView",
    "HotShape",
    "InputAddressMismatchError",
    "MockCUDAGraph",
    "PrewarmReport",
    "ProfileError",
    "SizeAboveLadderError",
    "cudagraph_context",
    "default_ladder",
    "get_cudagraph_sizes",
    "get_forward_context",
    "graph_lock",
    "is_capturing",
    "mock_graph_pool_handle",
    "pad_to_size",
]
