"""config/prometheus.yml: valid for Prometheus itself (`promtool check config`), and sane."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from deploy_support import PROMETHEUS_CONFIG, parse_duration, prometheus_tool, run_tool


def test_promtool_check_config() -> None:
    promtool = prometheus_tool("promtool")
    output = run_tool([promtool, "check", "config", str(PROMETHEUS_CONFIG)])
    assert "SUCCESS" in output, output


def test_promtool_check_config_rejects_a_bad_file(tmp_path: Path) -> None:
    # The checker really validates: a timeout longer than the interval is refused.
    promtool = prometheus_tool("promtool")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"]["scrape_timeout"] = "1m"
    bad = tmp_path / "prometheus.yml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(pytest.fail.Exception, match="scrape timeout greater than scrape interval"):
        run_tool([promtool, "check", "config", str(bad)])


def test_scrape_interval_and_sidecar_job() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    interval = parse_duration(config["global"]["scrape_interval"])
    assert 1 <= interval <= 15, "a traffic shift should show within a dashboard refresh"
    assert parse_duration(config["global"]["scrape_timeout"]) < interval
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "cudagraph-sidecar"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
