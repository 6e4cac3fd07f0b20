"""The front-ends sweep's accounting: per-thread CPU from /proc and its table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.workers import _delta, markdown, thread_cpu
from tests.server_process import ROOT, child_pids


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
            "front_end_busy_mean": None if w == 1 else 0.5,
            "front_end_busy_max": None if w == 1 else 0.61,
        }
        for w in (1, 2)
    ]
    table = markdown(rows, "toy", 32)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(lines) == 3  # header + two rows
    assert lines[1] == "| 1 | 1,000 | 12.5 | 0 | 15.9 | 470 | 250 | 220 | - | 221 | - / - | 42 % |"
    assert "| 33 |" in lines[2] and "| 50 % / 61 % |" in lines[2]


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _tree(pid: int) -> list[int]:
    children = child_pids(pid)
    return children + [p for child in children for p in _tree(child)]


def test_a_terminated_benchmark_stops_the_servers_it_started(tmp_path: Path) -> None:
    # What gpu_check's time limit does: SIGTERM while a sidecar (supervisor, engine, two front
    # ends) is up. Nothing of it may live on to disturb the next step.
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "workers", "--quick", "--sweep", "2", "--out", tmp_path],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(tree := _tree(bench.pid)) < 4:
            assert bench.poll() is None and time.monotonic() < deadline, "no sidecar came up"
            time.sleep(0.1)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while alive := [pid for pid in tree if _running(pid)]:
            assert time.monotonic() < deadline, f"still running: {alive}"
            time.sleep(0.1)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
