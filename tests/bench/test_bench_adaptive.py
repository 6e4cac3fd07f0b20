"""The adaptive-capture benchmark: the trace generator, and the quick preset end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.adaptive import bucket_of, make_trace

ROOT = Path(__file__).resolve().parents[2]
LADDER = [(b, s) for b in (1, 2, 4, 8) for s in (16, 32, 64, 128)]


def _bucket(shape: tuple[int, int]) -> tuple[int, int]:
    return bucket_of(shape[0], [1, 2, 4, 8]), bucket_of(shape[1], [16, 32, 64, 128])


def test_trace_is_fixed_skewed_and_inside_its_buckets() -> None:
    trace = make_trace(LADDER, 4000, seed=7)
    assert trace == make_trace(LADDER, 4000, seed=7)
    assert trace != make_trace(LADDER, 4000, seed=8)
    counts = Counter(_bucket(s) for s in trace)
    top3 = sum(c for _, c in counts.most_common(3)) / len(trace)
    assert 0.75 <= top3 <= 0.85  # the hot share is 80%
    # hot buckets come from the smaller half of the ladder
    for (b, s), _ in counts.most_common(3):
        assert b <= 2 and s <= 32
    # a long tail: most of the ladder shows up, at least once
    assert len(counts) >= len(LADDER) - 3
    # every request shape pads to a rung above the next smaller one (no "free" smaller bucket)
    for b, s in trace:
        assert 1 <= b <= 8 and 3 <= s <= 128
        assert _bucket((b, s)) in LADDER


def test_trace_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        make_trace(LADDER, 0)
    with pytest.raises(ValueError):
        make_trace([], 10)


def test_adaptive_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "res"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "adaptive", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # ~15 s alone; generous because the 2 cores are shared
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    md = (out / "results.md").read_text()
    assert "## Adaptive capture against the full ladder" in md
    for name in ("| full ladder |", "| adaptive |", "| adaptive, capped |"):
        assert name in md
    png = out / "adaptive.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "results.json").read_text())["adaptive"]
    pol = {p["name"]: p for p in data["policies"]}
    full, ada, capped = pol["full ladder"], pol["adaptive"], pol["adaptive, capped"]
    # the full ladder captures every rung up front and then only replays
    assert full["prewarm_captured"] == data["ladder_size"] == full["captures_total"]
    assert full["hit_rate_trace"] == 1.0 and full["captures_in_trace"] == 0
    # adaptive captures only what the trace asked for, and is ready before any capture
    assert ada["prewarm_captured"] == 0 and ada["ready_seconds"] < full["ready_seconds"]
    assert 0 < ada["captures_total"] <= data["ladder_size"]
    assert ada["hit_rate_second_half"] >= ada["hit_rate_trace"]
    # the capped cache respects its limit by evicting
    assert capped["cached_at_end"] <= capped["max_cached_graphs"] < data["ladder_size"]
    assert capped["evictions"] > 0
    assert len(ada["curve_x"]) == len(ada["curve_hit_rate"]) == len(ada["curve_cached"])
    assert ada["curve_x"][-1] == data["preset"]["trace_len"]
