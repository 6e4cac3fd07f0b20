"""``MockCUDAGraph``: a CPU stand-in for ``torch.cuda.CUDAGraph`` with the same aliasing.

A real graph reads the captured input addresses and writes the SAME output memory on every
replay. The mock records the function and its output; ``replay()`` re-runs the function and
copies into the captured outputs. So a caller that keeps an output without copying sees it
overwritten by the next replay, and one that passes new tensors instead of copying into the
static inputs gets stale results, exactly as on a GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch

from app.cudagraph.tensors import iter_tensors

# Mock pool ids: (0, n), distinct from nothing real (a CPU build has no CUDA pools).
_pool_ids = itertools.count(1)

MockPoolHandle = tuple[int, int]


def mock_graph_pool_handle() -> MockPoolHandle:
    """A fresh pool id, like ``torch.cuda.graph_pool_handle()``."""
    return (0, next(_pool_ids))


class MockCUDAGraph:
    """State machine: empty -> capturing (``capture_begin``) -> ``record(fn, output)`` ->
    captured (``capture_end``) -> ``replay()`` any number of times -> ``reset()`` -> empty."""

    __slots__ = ("_state", "_pool", "_fn", "_single", "_leaves", "_inference")

    def __init__(self) -> None:
        self._state = "empty"
        self._pool: MockPoolHandle | None = None
        self._fn: Callable[[], Any] | None = None
        self._single: torch.Tensor | None = None
        self._leaves: list[torch.Tensor] = []
        self._inference = False

    def capture_begin(self, pool: MockPoolHandle | None = None) -> None:
        if self._state != "empty":
            raise RuntimeError(f"capture_begin on a mock graph that is {self._state}; reset() it")
        self._pool = pool if pool is not None else mock_graph_pool_handle()
        self._state = "capturing"

    def record(self, fn: Callable[[], Any], output: Any) -> None:
        """What the capture recorded: ``fn()`` recomputes it, ``output`` is where it lands."""
        if self._state != "capturing":
            raise RuntimeError(f"record() outside a capture (graph is {self._state})")
        leaves = list(iter_tensors(output))
        if not leaves:
            raise RuntimeError("a graph must produce at least one tensor output")
        self._fn = fn
        self._leaves = leaves
        self._single = output if isinstance(output, torch.Tensor) else None
        # A real graph replays its kernels whatever the caller's autograd mode is; the mock
        # replays under the modes of the capture so copy_ into the outputs stays legal.
        self._inference = torch.is_inference_mode_enabled()

    def capture_end(self) -> None:
        if self._state != "capturing":
            raise RuntimeError(f"capture_end on a mock graph that is {self._state}")
        if self._fn is None:
            self._state = "empty"
            raise RuntimeError("capture ended without record(): nothing was captured")
        self._state = "captured"

    def replay(self) -> None:
        if self._state != "captured":
            raise RuntimeError(f"replay of a mock graph that is {self._state}")
        if self._inference and not torch.is_inference_mode_enabled():
            with torch.inference_mode():
                self._run()
        elif torch.is_grad_enabled():
            # Replays never record autograd history (a real graph has none either).
            with torch.no_grad():
                self._run()
        else:
            self._run()

    def _run(self) -> None:
        fn = self._fn
        assert fn is not None
        result = fn()
        single = self._single
        if single is not None:
            single.copy_(result)
            return
        fresh = list(iter_tensors(result))
        if len(fresh) != len(self._leaves):
            raise RuntimeError(
                f"replay produced {len(fresh)} tensors, the capture produced {len(self._leaves)}"
            )
        for dst, src in zip(self._leaves, fresh, strict=True):
            dst.copy_(src)

    def reset(self) -> None:
        """Forget the capture (drops the output memory it kept alive)."""
        self._fn = None
        self._single = None
        self._leaves = []
        self._state = "empty"

    def pool(self) -> MockPoolHandle:
        if self._pool is None:
            raise RuntimeError("pool() of a mock graph that was never captured")
        return self._pool

    @property
    def captured(self) -> bool:
        return self._state == "captured"
