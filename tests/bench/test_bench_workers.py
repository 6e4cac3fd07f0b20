"""The front-ends sweep's accounting: per-thread CPU from /proc and its table."""

from __future__ import annotations

import os
import time

from bench.workers import _delta, markdown, thread_cpu


def test_thread_cpu_counts_what_a_thread_burns() -> None:
    main = os.getpid()  # the main thread's id is the process id
    before = thread_cpu(main)
    t0 = time.thread_time()
    while time.thread_time() - t0 < 0.3:
        pass
    used = _delta(before, thread_cpu(main))
    assert 0.2 <= used[main][1] <= 1.0  # clock ticks of 10 ms
    assert all(seconds >= 0.0 for _, seconds in used.values())


def test_the_table_has_one_row_per_worker_count() -> None:
    rows = [
        {
            "workers": w,
            "requests_per_s": 1000.0 * w,
            "p50_ms": 12.5,
            "errors": 0,
            "mean_batch": 15.9,
            "service_cpu_us_per_request": 470.0,
            "forward_cpu_us_per_text": 250.0,
            "serving_overhead_us": 220.0,
            "engine_outside_forward_us": None if w == 1 else 33.0,
            "raw_cpu_us_per_text": 221.0,
            "loadgen_busy": 0.42,
        }
        for w in (1, 2)
    ]
    table = markdown(rows, "toy", 32)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header + two rows
    assert lines[1] == "| 1 | 1,000 | 12.5 | 0 | 15.9 | 470 | 250 | 220 | - | 221 | 42 % |"
    assert "| 33 |" in lines[2]
