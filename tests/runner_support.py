"""Helpers the runner tests share (no tests here; free of the web stack for the GPU check)."""

from __future__ import annotations

from app.engine.runner import EmbeddingRunner


def capture_due(runner: EmbeddingRunner) -> int:
    """What the engine does in idle gaps: capture every due shape; returns how many ran."""
    done = 0
    while runner.idle_work_due(True):
        runner.idle_capture(True)
        done += 1
    return done
