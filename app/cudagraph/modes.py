"""Runtime modes of the graph manager (vLLM's ``CUDAGraphMode``, reduced to what we use)."""

from __future__ import annotations

from enum import IntEnum


class CUDAGraphMode(IntEnum):
    """How a forward pass is run.

    NONE: always eager. PIECEWISE: graphs around the token-wise pieces of the model (linear
    layers, LayerNorm, feed-forward) keyed by the token count only, attention eager in between.
    FULL: one graph for the whole forward, keyed by the exact padded batch.
    """

    NONE = 0
    PIECEWISE = 1
    FULL = 2

    def has_graphs(self) -> bool:
        """True for every mode that captures graphs (anything but NONE)."""
        return self is not CUDAGraphMode.NONE

    def has_full_cudagraphs(self) -> bool:
        """True when the whole forward is one graph."""
        return self is CUDAGraphMode.FULL
