"""The service benchmark end to end, small: the real sidecar (`python -m app serve`) and the
naive baseline as real processes with the toy model, driven by the load generator process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from server_process import ServerProcess

from app.devices import resolve_dtype
from bench.report import ResultsDir
from bench.service import (
    NAIVE,
    SIDECAR,
    ServiceOptions,
    ServicePreset,
    run_service_bench,
)

TINY = ServicePreset(
    concurrencies=(1, 4),
    requests=12,
    warmup_requests=8,
    level_warmup=2,
    num_texts=32,
    saturation_pairs=2,
    saturation_requests=16,
    rounds=2,
)


@pytest.mark.slow
def test_service_bench_toy_sidecar_and_naive(tmp_path: Path) -> None:
    res = ResultsDir(tmp_path / "out")
    opts = ServiceOptions(
        preset=TINY, threads=1, max_batch_size=4, servers=(SIDECAR, NAIVE), model="toy"
    )
    data = run_service_bench(opts, res)
    assert data["order"] == [SIDECAR, NAIVE]
    for name in (SIDECAR, NAIVE):
        server = data["servers"][name]
        assert server["ready_seconds"] > 0
        for level in ("1", "4"):
            r = server["levels"][level]
            assert (r["requests"], r["ok"], r["errors"]) == (24, 24, 0), r
            assert r["concurrency"] == int(level)
            assert 0 < r["p50_ms"] <= r["p99_ms"]
        # two rounds, pooled: each round's figure is kept as well
        assert len(server["levels"]["4"]["round_throughputs"]) == 2
    assert data["rounds"] == 2
    # the sidecar's own counters moved by exactly the texts of the measured runs (the warm-ups
    # come before the first scrape), summed over the two rounds
    side = data["servers"][SIDECAR]["levels"]["4"]["sidecar"]
    assert side["texts"] == 2 * TINY.requests
    assert 1.0 <= side["mean_batch_size"] <= 4.0
    one = data["servers"][SIDECAR]["levels"]["1"]["sidecar"]
    assert one["mean_batch_size"] == 1.0  # one client: never more than one text per batch
    ratios = {r["concurrency"]: r for r in data["ratios"]}
    expect = (
        data["servers"][SIDECAR]["levels"]["4"]["throughput_rps"]
        / data["servers"][NAIVE]["levels"]["4"]["throughput_rps"]
    )
    assert ratios[4]["throughput_x_naive"] == pytest.approx(expect)
    assert data["raw_runner"]["batch_size"] == 4 and data["raw_runner"]["texts_per_s_median"] > 0
    # the raw runner timed exactly the texts each saturation run sent: 16 in batches of 4
    assert (data["raw_runner"]["texts"], data["raw_runner"]["batches"]) == (16, 4)
    targets = {t["target"]: t for t in data["targets"]}
    # this preset has no 32-client level: those targets are reported as not measured
    assert all(t["met"] is None for name, t in targets.items() if name.startswith("32 clients"))
    md = res.markdown_path.read_text()
    assert "## Service: sidecar against two baselines" in md
    assert "| 4 | naive same-model |" in md
    assert (res.path / "service.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(res.json_path.read_text())["service"]
    assert saved["servers"][SIDECAR]["settings"]["SIDECAR_ADMIN_TOKEN"] == "***"
    front_ends = os.environ.get("SIDECAR_WORKERS", "1")  # auto: 1 on a CPU host
    assert saved["servers"][SIDECAR]["settings"]["front_ends"] == front_ends
    assert (res.path / "logs" / "server-sidecar-round2.log").is_file()
    # the saturated fraction: 2 pairs per round, each a sidecar run at the top level (all its
    # requests answered) and a raw pass; the median of the pairs' ratios
    pairs = data["saturation_pairs"]
    assert len(pairs) == 2 * TINY.saturation_pairs and data["raw_runner"]["passes"] == 4
    for pair in pairs:
        assert pair["sidecar_errors"] == 0 and pair["sidecar_rps"] > 0
        assert pair["fraction"] == pytest.approx(pair["sidecar_rps"] / pair["raw_texts_per_s"])
        assert 0.0 < pair["loadgen_busy"] < 1.5  # its CPU over its wall time
    fractions = sorted(p["fraction"] for p in pairs)
    assert data["saturated_fraction_of_raw"] == pytest.approx((fractions[1] + fractions[2]) / 2)
    saturated = targets["saturated throughput >= 85% of the raw runner"]
    assert saturated["value"] == data["saturated_fraction_of_raw"]
    assert saturated["met"] is (saturated["value"] >= 0.85)
    assert "median of 4 pairs" in saturated["note"] and "Saturation pairs" in md
    assert "load generator busy at most" in saturated["note"]
    # one device and dtype for every server and the raw runner (auto on this CPU: bfloat16
    # where it multiplies bfloat16 natively, else float32)
    auto = str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    assert (data["device"], data["dtype"]) == ("cpu", auto)
    assert saved["servers"][SIDECAR]["settings"]["SIDECAR_DEVICE"] == "cpu"
    assert saved["servers"][SIDECAR]["settings"]["SIDECAR_DTYPE"] == auto
    assert saved["servers"][NAIVE]["settings"]["device"] == "cpu"
    assert saved["servers"][NAIVE]["settings"]["dtype"] == auto
    assert f"--device cpu --dtype {auto}" in saved["servers"][NAIVE]["command"]
    assert (data["raw_runner"]["device"], data["raw_runner"]["dtype"]) == ("cpu", auto)


NOWHERE = "http://127.0.0.1:9/readyz"  # nothing listens there


def test_server_that_dies_reports_its_log(tmp_path: Path) -> None:
    code = "import sys; print('model file missing: boom'); sys.exit(3)"
    server = ServerProcess([sys.executable, "-c", code], {}, tmp_path / "s.log", NOWHERE)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            server.wait_ready(timeout_s=30)
    finally:
        server.stop()


def test_stop_ends_a_running_server(tmp_path: Path) -> None:
    code = "import time; time.sleep(60)"
    server = ServerProcess([sys.executable, "-c", code], {}, tmp_path / "s.log", NOWHERE)
    with pytest.raises(TimeoutError):
        server.wait_ready(timeout_s=0.5)
    server.stop()
    assert server.proc.returncode is not None  # terminated by SIGTERM, not left behind


def test_raw_runner_times_exactly_the_texts_a_level_sends() -> None:
    from bench.loadgen import texts_sent
    from bench.raw_runner import measure_raw_runner

    mix = ["alpha beta", "gamma", "delta epsilon zeta"]
    # request i carries texts[i % len(texts)], as the load generator sends them
    assert texts_sent(mix, 5) == [
        "alpha beta",
        "gamma",
        "delta epsilon zeta",
        "alpha beta",
        "gamma",
    ]
    raw = measure_raw_runner(
        mode="NONE",
        batch_size=2,
        threads=1,
        model="toy",
        texts=texts_sent(mix, 5),
        repeats=1,
    )
    # 5 texts in batches of 2: the short last batch is timed and counted too
    assert (raw["texts"], raw["batches"]) == (5, 3)
    assert raw["texts_per_s_median"] > 0
    assert raw["mean_tokens_per_text"] > 2  # [CLS] + words + [SEP]


def test_raw_runner_process_times_one_pass_per_request(tmp_path: Path) -> None:
    import os

    from bench.raw_runner import RawRunnerProcess

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["alpha beta", "gamma", "delta epsilon zeta"]))
    args = ["--mode", "NONE", "--batch-size", "2", "--threads", "1", "--model", "toy"]
    args += ["--texts-file", str(texts), "--count", "5"]
    with RawRunnerProcess(args, dict(os.environ)) as raw:
        # described once loaded: the 5 texts a level of 5 requests sends, in batches of 2
        assert (raw.info["texts"], raw.info["batches"], raw.info["mode"]) == (5, 3, "NONE")
        first, second = raw.texts_per_s(), raw.texts_per_s()
        assert first > 0 and second > 0


def test_raw_runner_process_reports_a_failed_start(tmp_path: Path) -> None:
    import os

    from bench.raw_runner import RawRunnerProcess

    missing = tmp_path / "absent.json"
    args = ["--mode", "NONE", "--batch-size", "2", "--threads", "1", "--model", "toy"]
    with pytest.raises(RuntimeError, match="absent.json"):
        RawRunnerProcess([*args, "--texts-file", str(missing), "--count", "5"], dict(os.environ))
