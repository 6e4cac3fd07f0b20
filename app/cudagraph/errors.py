"""The graph manager's own exception types (all subclass a builtin, so callers can be generic)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.cudagraph.descriptor import BatchDescriptor


class SizeAboveLadderError(ValueError):
    """A count is larger than the largest size of the capture ladder (nothing to pad it to)."""

    def __init__(self, count: int, largest: int) -> None:
        super().__init__(
            f"count {count} is above the largest capture size {largest}: "
            "split the batch or raise the ladder's maximum"
        )
        self.count = count
        self.largest = largest


class InputAddressMismatchError(RuntimeError):
    """Debug check: a replay was called with inputs that are not the tensors the graph captured.

    A graph reads its inputs from fixed addresses; a caller that passes freshly allocated tensors
    instead of copying into the static ones would silently get results for stale data.
    """

    def __init__(
        self,
        descriptor: BatchDescriptor,
        captured: tuple[int, ...],
        given: tuple[int, ...],
    ) -> None:
        differing: list[int] | str = [
            i for i, (a, b) in enumerate(zip(captured, given, strict=False)) if a != b
        ]
        if not differing:
            differing = "count"
        super().__init__(
            f"input addresses for {descriptor} differ from the captured ones "
            f"(tensor inputs {differing}; captured {len(captured)} tensors, given {len(given)}): "
            "copy new data into the static input tensors instead of passing new tensors"
        )
        self.descriptor = descriptor


class ProfileError(ValueError):
    """A hot-shape profile is malformed, of another version, or recorded in another mode."""
