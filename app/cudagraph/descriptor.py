"""``BatchDescriptor``: the key of the graph cache (one padded batch shape)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a token count is always a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class BatchDescriptor:
    """A padded batch shape.

    num_tokens: tokens in the padded batch (FULL: batch * seq_len, PIECEWISE: packed token count).
    num_reqs: requests in the padded batch; FULL graphs depend on it, PIECEWISE graphs do not
        (``relaxed()`` drops it). None = unknown / irrelevant.
    is_uniform_decode: every request contributes the same number of tokens (decode steps); kept
        because a FULL graph may take a different attention path for it.
    """

    num_tokens: int
    num_reqs: int | None = None
    is_uniform_decode: bool = False
    # The hash is computed once: descriptors are dict keys on the replay hot path.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("num_tokens", self.num_tokens)
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")
        if self.num_reqs is not None:
            _check_int("num_reqs", self.num_reqs)
            if self.num_reqs < 1:
                raise ValueError(f"num_reqs must be >= 1 or None, got {self.num_reqs}")
            if self.num_reqs > self.num_tokens:
                raise ValueError(
                    f"num_reqs ({self.num_reqs}) cannot exceed num_tokens ({self.num_tokens}): "
                    "every request has at least one token"
                )
        if not isinstance(self.is_uniform_decode, bool):
            raise ValueError(
                f"is_uniform_decode must be a bool, got {type(self.is_uniform_decode).__name__}"
            )
        object.__setattr__(
            self, "_hash", hash((self.num_tokens, self.num_reqs, self.is_uniform_decode))
        )

    def __hash__(self) -> int:
        return self._hash

    def relaxed(self) -> BatchDescriptor:
        """The key a PIECEWISE graph uses: same token count, nothing else."""
        if self.num_reqs is None and not self.is_uniform_decode:
            return self
        return BatchDescriptor(self.num_tokens)

    def sort_key(self) -> tuple[int, int, bool]:
        """Orders by size: token count, then request count (None first), then the flag."""
        return (self.num_tokens, self.num_reqs or 0, self.is_uniform_decode)

    def label(self) -> str:
        """Short stable text, e.g. ``t128_r4`` or ``t512`` (bounded: shapes come from a ladder)."""
        text = f"t{self.num_tokens}"
        if self.num_reqs is not None:
            text += f"_r{self.num_reqs}"
        if self.is_uniform_decode:
            text += "_u"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_tokens": self.num_tokens,
            "num_reqs": self.num_reqs,
            "is_uniform_decode": self.is_uniform_decode,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchDescriptor:
        """Inverse of ``to_dict``; raises ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a descriptor must be an object, got {type(data).__name__}")
        unknown = set(data) - {"num_tokens", "num_reqs", "is_uniform_decode"}
        if unknown:
            raise ValueError(f"unknown descriptor fields {sorted(unknown)}")
        if "num_tokens" not in data:
            raise ValueError("descriptor is missing num_tokens")
        return cls(
            num_tokens=data["num_tokens"],
            num_reqs=data.get("num_reqs"),
            is_uniform_decode=data.get("is_uniform_decode", False),
        )
