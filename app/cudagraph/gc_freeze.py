"""Garbage collection frozen and disabled during captures (re-entrant, process-wide).

A collection inside a capture could run finalisers that do CUDA work on the capturing stream; a
bulk prewarm would otherwise pay for full collections between captures. Nesting is counted so a
prewarm can freeze once around many captures.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def gc_frozen(enabled: bool = True) -> Iterator[None]:
    """Freeze (``gc.freeze``) and disable the collector for the block; restore after the last."""
    global _depth, _was_enabled
    if not enabled:
        yield
        return
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.freeze()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()
                if _was_enabled:
                    gc.enable()
