"""The hot-shape profile: what traffic asked for, saved at shutdown and restored at start.

Format (JSON, version 1):

    {"format": "cudagraph-hot-shapes", "version": 1, "mode": "FULL", "exported_at": 1.7e9,
     "shapes": [{"num_tokens": 128, "num_reqs": 4, "is_uniform_decode": false,
                 "count": 42, "captured": true}, ...]}

``shapes`` is ordered most requested first; ``captured`` is informational (what was cached at
export). Loading validates everything and raises ``ProfileError`` naming the problem; a profile
recorded in another mode is refused (its keys would never match). Files are written atomically
(temporary file in the same directory, fsync, rename), so a crash never leaves half a profile.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from os import PathLike
from pathlib import Path
from typing import Any

from app.cudagraph.descriptor import BatchDescriptor
from app.cudagraph.errors import ProfileError
from app.cudagraph.modes import CUDAGraphMode

PROFILE_FORMAT = "cudagraph-hot-shapes"
PROFILE_VERSION = 1


def build_profile(
    mode: CUDAGraphMode, shapes: list[tuple[BatchDescriptor, int, bool]]
) -> dict[str, Any]:
    """shapes: (descriptor, count, captured), most requested first."""
    return {
        "format": PROFILE_FORMAT,
        "version": PROFILE_VERSION,
        "mode": mode.name,
        "exported_at": time.time(),
        "shapes": [
            {**d.to_dict(), "count": count, "captured": captured} for d, count, captured in shapes
        ],
    }


def parse_profile(profile: object, mode: CUDAGraphMode) -> list[tuple[BatchDescriptor, int]]:
    """Validate ``profile`` for a wrapper running ``mode``; returns (descriptor, count)."""
    if not isinstance(profile, dict):
        raise ProfileError(f"a profile must be a JSON object, got {type(profile).__name__}")
    if profile.get("format") != PROFILE_FORMAT:
        raise ProfileError(
            f"not a hot-shape profile: format is {profile.get('format')!r}, "
            f"expected {PROFILE_FORMAT!r}"
        )
    version = profile.get("version")
    if version != PROFILE_VERSION:
        raise ProfileError(
            f"unsupported profile version {version!r}: this build reads version {PROFILE_VERSION}"
        )
    recorded = profile.get("mode")
    if recorded not in CUDAGraphMode.__members__:
        raise ProfileError(
            f"profile mode {recorded!r} is not one of {list(CUDAGraphMode.__members__)}"
        )
    if recorded != mode.name:
        raise ProfileError(
            f"profile was recorded in mode {recorded}, this cache runs mode {mode.name}"
        )
    shapes = profile.get("shapes")
    if not isinstance(shapes, list):
        raise ProfileError(f"profile 'shapes' must be a list, got {type(shapes).__name__}")
    out: list[tuple[BatchDescriptor, int]] = []
    for index, item in enumerate(shapes):
        if not isinstance(item, dict):
            raise ProfileError(f"shapes[{index}] must be an object, got {type(item).__name__}")
        fields = dict(item)
        count = fields.pop("count", None)
        fields.pop("captured", None)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ProfileError(f"shapes[{index}].count must be an int >= 0, got {count!r}")
        try:
            descriptor = BatchDescriptor.from_dict(fields)
        except ValueError as exc:
            raise ProfileError(f"shapes[{index}]: {exc}") from exc
        out.append((descriptor, count))
    return out


def write_profile(path: str | PathLike[str], profile: dict[str, Any]) -> None:
    """Write ``profile`` as JSON to ``path`` atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(profile, handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_profile(path: str | PathLike[str]) -> object:
    """Read the JSON of a profile file. A missing file raises FileNotFoundError (normal on a
    first start); unreadable JSON raises ``ProfileError`` naming the file and position."""
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"profile {target} is not UTF-8 text: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(
            f"profile {target} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from exc
