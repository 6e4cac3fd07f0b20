"""The process-wide graph lock: no capture ever overlaps a replay, across all wrappers.

One lock for every wrapper because a CUDA capture in "global" mode fails if another thread
launches work meanwhile, and because PIECEWISE pieces of one model live in separate wrappers. It
is re-entrant, so a caller that must keep copy-in, call and copy-out of static buffers atomic can
hold it around all three (``with graph_lock(): ...``) and the wrapper re-acquires it freely.
Read-only views never take it (they use each wrapper's short state lock instead).
"""

from __future__ import annotations

import threading

_GRAPH_LOCK = threading.RLock()


def graph_lock() -> threading.RLock:
    """The re-entrant lock held around every capture, replay and eviction."""
    return _GRAPH_LOCK
