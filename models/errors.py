"""The one error a model directory can raise at load: `ModelLoadError`, naming the file."""

from __future__ import annotations

from pathlib import Path


class ModelLoadError(RuntimeError):
    """A model directory or one of its files is missing, malformed or not supported.

    `.file` names the file at fault (or the directory, or the hub id), `.reason` says why.
    """

    def __init__(self, file: Path | str, reason: str) -> None:
        self.file = Path(file)
        self.reason = reason
        super().__init__(f"{self.file}: {reason}")
