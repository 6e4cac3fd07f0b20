"""Capture back-off: a shape whose capture failed runs eagerly for a while before a retry.

Exponential: base * 2**(failures - 1) seconds, capped, measured on ``time.monotonic``. A
successful capture forgets the shape's record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from app.cudagraph.descriptor import BatchDescriptor


@dataclass(slots=True)
class FailureRecord:
    failures: int
    retry_at: float
    reason: str


class CaptureBackoff:
    """Not locked by itself: the owning cache calls it under its state lock."""

    def __init__(self, base_s: float, max_s: float) -> None:
        self._base_s = base_s
        self._max_s = max_s
        self._records: dict[BatchDescriptor, FailureRecord] = {}

    def record_failure(self, key: BatchDescriptor, reason: str, now: float | None = None) -> float:
        """Count a failure; returns the seconds the shape now stays eager."""
        now = time.monotonic() if now is None else now
        record = self._records.get(key)
        failures = 1 if record is None else record.failures + 1
        delay = min(self._base_s * 2.0 ** (failures - 1), self._max_s)
        self._records[key] = FailureRecord(failures, now + delay, reason)
        return delay

    def blocked(self, key: BatchDescriptor, now: float | None = None) -> bool:
        """True while the shape is inside its back-off window."""
        record = self._records.get(key)
        if record is None:
            return False
        return (time.monotonic() if now is None else now) < record.retry_at

    def blocked_keys(self, now: float | None = None) -> set[BatchDescriptor]:
        now = time.monotonic() if now is None else now
        return {key for key, record in self._records.items() if now < record.retry_at}

    def record(self, key: BatchDescriptor) -> FailureRecord | None:
        return self._records.get(key)

    def forget(self, key: BatchDescriptor) -> None:
        self._records.pop(key, None)

    def clear(self) -> None:
        self._records.clear()
