"""Garbage collection frozen and disabled during captures (re-entrant, process-wide).

A collection inside a capture could run finalisers that do CUDA work on the capturing stream; a
bulk prewarm would otherwise pay for full collections between captures. Nesting is counted so a
prewarm can freeze once around many captures.

A process that already keeps a frozen heap (the service freezes what start-up allocated once it
is ready) stays frozen after the block: unfreezing would hand its whole start-up heap back to
the collector. What the block allocated (the new graph's objects, long-lived) stays frozen too.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False
_was_frozen = False


@contextmanager
def gc_frozen(enabled: bool = True) -> Iterator[None]:
    """Freeze (``gc.freeze``) and disable the collector for the block; restore after the last."""
    global _depth, _was_enabled, _was_frozen
    if not enabled:
        yield
        return
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            _was_frozen = gc.get_freeze_count() > 0
            gc.freeze()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                if not _was_frozen:
                    gc.unfreeze()
                if _was_enabled:
                    gc.enable()
