"""The Markdown table writer, the results folder and the plots produce real files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.plots import plot_engine_latency, plot_hit_rate, plot_service
from bench.report import ResultsDir, fmt, markdown_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_markdown_table_layout_and_alignment() -> None:
    md = markdown_table(["name", "ms", "ok"], [["a|b", 1.23456, True], ["c", None, False]])
    lines = md.splitlines()
    assert lines[0] == "| name | ms | ok |"
    assert lines[1] == "|:---|---:|---:|"
    assert lines[2] == "| a\\|b | 1.23 | yes |"  # pipe escaped, 2 decimals, bool as yes/no
    assert lines[3] == "| c | — | no |"


def test_markdown_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        markdown_table(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError):
        markdown_table([], [])


def test_fmt() -> None:
    assert fmt(math.nan) == "—"
    assert fmt(float("inf")) == "inf"
    assert fmt(3.14159, 3) == "3.142"
    assert fmt(7) == "7"


def test_results_dir_keeps_sections_in_order(tmp_path: Path) -> None:
    res = ResultsDir(tmp_path / "out")
    res.write_section("adaptive", "## Adaptive\n\nA\n", {"x": 1.0, "bad": math.nan})
    res.write_section("engine", "## Engine\n\nE\n", {"y": [1, 2]})
    # a second run of one section replaces it, the other stays
    res.write_section("adaptive", "## Adaptive\n\nB\n", {"x": 2.0})
    md = res.markdown_path.read_text()
    assert md.startswith("# Benchmark results")
    assert "## Machine" in md and "CPU:" in md
    assert md.index("## Engine") < md.index("## Adaptive")  # engine comes first
    assert "\nB\n" in md and "\nA\n" not in md
    data = json.loads(res.json_path.read_text())
    assert data["adaptive"] == {"x": 2.0}
    assert data["engine"] == {"y": [1, 2]}
    assert data["machine"]["cpu_count"] >= 1
    with pytest.raises(ValueError):
        res.write_section("../evil", "x", {})


def test_nan_becomes_null_in_json(tmp_path: Path) -> None:
    res = ResultsDir(tmp_path)
    res.write_section("overhead", "## O\n", {"v": [math.nan, 1.0, float("inf")]})
    assert json.loads(res.json_path.read_text())["overhead"] == {"v": [None, 1.0, None]}


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def test_plots_write_png_files(tmp_path: Path) -> None:
    p1 = plot_engine_latency(
        ["1x16", "8x64", "32x256"],
        {"NONE": [1.0, 4.0, 40.0], "FULL": [0.5, 3.0, 38.0], "raw": [None, None, None]},
        tmp_path / "engine.png",
    )
    p2 = plot_service(
        [1, 32],
        {"sidecar": [50.0, 200.0], "naive": [40.0, None]},
        {"sidecar": [10.0, 100.0], "naive": [12.0, None]},
        {"sidecar": [20.0, 300.0], "naive": [30.0, None]},
        tmp_path / "sub" / "service.png",
        raw_runner_rps=250.0,
    )
    p3 = plot_hit_rate(
        {"adaptive": ([10, 20, 30], [0.5, math.nan, 1.0]), "full": ([10, 20, 30], [1, 1, 1])},
        tmp_path / "adaptive.png",
        captured={"adaptive": ([10, 20, 30], [1, 2, 2])},
    )
    for p in (p1, p2, p3):
        assert _is_png(p), p


def test_plot_rejects_mismatched_series(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 points for 3 buckets"):
        plot_engine_latency(["a", "b", "c"], {"NONE": [1.0, 2.0]}, tmp_path / "x.png")


def test_replay_table_renders_raw_wrapper_and_extra_rows() -> None:
    from bench.cli import _replay_table

    m = {
        "raw_replay_us": 370.0,
        "wrapper_replay_us": 377.4,
        "wrapper_vs_raw_ratio": 377.4 / 370.0,
        "target_ratio": 1.05,
        "meets_target": True,
    }
    table = _replay_table(m, [["eager", 1700.0, 1700.0 / 370.0, None, None]])
    lines = table.splitlines()
    assert lines[0] == "| measure | us | ratio | target | met |"
    assert lines[2].startswith("| raw CUDAGraph.replay() | 370.00 | 1.00 |")
    assert lines[3] == "| wrapper replay | 377.40 | 1.02 | <= 1.05x raw | yes |"
    assert lines[4].startswith("| eager | 1700.00 | 4.59 |")
    assert len(lines) == 5


def test_service_device_option_is_checked_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["service", "--device", "CUDA:1", "--dtype", "float16"])
    assert (args.device, args.dtype) == ("cuda:1", "float16")
    assert parser.parse_args(["service"]).device == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["service", "--device", "gpu"])
    assert "expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err


def test_st_dtype_changes_only_the_sentence_transformers_server() -> None:
    """The sentence-transformers server runs as first written (float32, no cast) by default,
    every other server in the benchmark's dtype; --st-dtype same puts it in that dtype too."""
    from bench.cli import build_parser
    from bench.service import NAIVE, QUICK, ST, ServiceOptions, server_commands

    args = build_parser().parse_args(["service", "--dtype", "bfloat16", "--st-dtype", "float32"])
    assert (args.dtype, args.st_dtype) == ("bfloat16", "float32")
    assert build_parser().parse_args(["service"]).st_dtype == "float32"
    assert build_parser().parse_args(["service", "--st-dtype", "same"]).st_dtype == "same"

    def dtypes(opts: ServiceOptions) -> dict[str, str]:
        runs = server_commands(opts, port=1, admin_token="t")
        out = {}
        for name in (NAIVE, ST):
            cmd = runs[name].command
            assert runs[name].settings["dtype"] == cmd[cmd.index("--dtype") + 1]
            out[name] = runs[name].settings["dtype"]
        return out

    own = ServiceOptions(QUICK, device="cpu", dtype="bfloat16", st_dtype="float32")
    assert dtypes(own) == {NAIVE: "bfloat16", ST: "float32"}
    assert dtypes(ServiceOptions(QUICK, device="cpu", dtype="bfloat16")) == dtypes(own)
    same = ServiceOptions(QUICK, device="cpu", dtype="bfloat16", st_dtype="same")
    assert dtypes(same) == {NAIVE: "bfloat16", ST: "bfloat16"}


def test_sidecar_prewarms_its_ladder_only_with_real_graphs() -> None:
    """On a CPU (mock graphs, NONE by default) the bench sidecar starts as configured."""
    from bench.service import QUICK, ServiceOptions, sidecar_settings

    env = sidecar_settings(ServiceOptions(QUICK, device="cpu"), "t")
    assert "SIDECAR_PREWARM_LADDER" not in env and env["SIDECAR_GRAPH_MODE"] == "NONE"
    full = sidecar_settings(ServiceOptions(QUICK, device="cpu", graph_mode="FULL"), "t")
    assert "SIDECAR_PREWARM_LADDER" not in full


@pytest.mark.gpu
def test_sidecar_prewarms_its_ladder_on_cuda() -> None:
    """With real graphs the measured runs replay: the whole ladder is captured at start-up,
    unless the caller asks otherwise."""
    from bench.service import QUICK, ServiceOptions, sidecar_settings

    assert (
        sidecar_settings(ServiceOptions(QUICK, device="cuda"), "t")["SIDECAR_PREWARM_LADDER"]
        == "true"
    )
    off = ServiceOptions(QUICK, device="cuda", sidecar_env={"SIDECAR_PREWARM_LADDER": "false"})
    assert sidecar_settings(off, "t")["SIDECAR_PREWARM_LADDER"] == "false"
    none = ServiceOptions(QUICK, device="cuda", graph_mode="NONE")
    assert "SIDECAR_PREWARM_LADDER" not in sidecar_settings(none, "t")
