"""The process-wide graph lock: no capture ever overlaps a replay, across all caches (a CUDA
capture in "global" mode fails if another thread launches work meanwhile). Re-entrant, so a
caller can hold it around copy-in, call and copy-out of its static buffers. Read-only views
never take it."""

from __future__ import annotations

import threading

_GRAPH_LOCK = threading.RLock()


def graph_lock() -> threading.RLock:
    """The re-entrant lock held around every capture, replay and eviction."""
    return _GRAPH_LOCK
