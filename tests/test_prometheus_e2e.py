"""End to end: a real Prometheus scrapes a real `python -m app serve` process.

The sidecar serves the toy model on a free loopback port; Prometheus (Debian's package) scrapes
it every second with the job of config/prometheus.yml. After repeated same-shape traffic, the
graph-cache gauges read back through Prometheus' HTTP query API must agree with what the
sidecar's own /admin/stats says, and every query of the Grafana dashboard must return data.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    PROMETHEUS_CONFIG,
    dashboard_queries,
    exported_series_names,
    load_dashboard,
    prometheus_tool,
    promql_metric_names,
    run_tool,
    substitute_grafana_variables,
)
from prometheus_server import (
    ManagedProcess,
    PrometheusServer,
    free_port,
    http_get,
    wait_for,
)

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "e2e-admin-token"
JOB = "cudagraph-sidecar"
SAME_TEXT = "the same sentence, over and over, so one padded shape turns hot"
REQUESTS = 24


class Sidecar:
    def __init__(self, process: ManagedProcess, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())

    def admin_stats(self) -> dict[str, Any]:
        status, body = http_get(
            f"{self.url}/admin/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert status == 200, f"/admin/stats answered {status}: {body}"
        stats = json.loads(body)
        assert isinstance(stats, dict)
        return stats

    def metrics(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prometheus-e2e")


@pytest.fixture(scope="module")
def sidecar(workdir: Path) -> Iterator[Sidecar]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
    env.update(
        {
            "SIDECAR_MODEL_PATH": "toy",
            "SIDECAR_DEVICE": "cpu",
            "SIDECAR_GRAPH_MODE": "FULL",
            "SIDECAR_ADMIN_TOKEN": ADMIN_TOKEN,
            "SIDECAR_LOG_LEVEL": "info",
        }
    )
    args = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    # Run from the repo root (ManagedProcess does), so `-m app` finds the checkout even where it
    # is not installed.
    process = ManagedProcess("sidecar", args, workdir / "sidecar.log", env)
    try:
        server = Sidecar(process, port)
        wait_for(
            lambda: True if http_get(f"{server.url}/readyz")[0] == 200 else None,
            timeout=180,
            what=f"sidecar {server.url}/readyz to answer 200",
            processes=[process],
        )
        yield server
    finally:
        process.stop()


def prometheus_config(sidecar_port: int) -> dict[str, Any]:
    """config/prometheus.yml's sidecar job, pointed at the test sidecar, scraping every second."""
    shipped = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    (job,) = [copy.deepcopy(j) for j in shipped["scrape_configs"] if j["job_name"] == JOB]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{sidecar_port}"]}]
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [job],
    }


@pytest.fixture(scope="module")
def prometheus(sidecar: Sidecar, workdir: Path) -> Iterator[PrometheusServer]:
    binary = prometheus_tool("prometheus")
    server = PrometheusServer(binary, prometheus_config(sidecar.port), workdir / "prometheus")
    try:
        server.wait_ready()
        wait_for(
            lambda: True if server.query(f'up{{job="{JOB}"}} == 1') else None,
            timeout=30,
            what=f"Prometheus to scrape the sidecar successfully (up{{job={JOB!r}}} == 1)",
            processes=[server.process, sidecar.process],
        )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def traffic(sidecar: Sidecar) -> dict[str, Any]:
    """Repeated same-shape /infer requests, then the sidecar's own view of its graph cache."""
    for _ in range(REQUESTS):
        status, body = sidecar.post_json("/infer", {"inputs": [SAME_TEXT]})
        assert status == 200 and len(body["embeddings"]) == 1
    stats = sidecar.admin_stats()
    # Same shape again and again: captured once it proved hot, then replayed.
    assert stats["cached_graphs"] >= 1, stats
    assert stats["hits"] > 0 and stats["hit_rate"] > 0, stats
    return stats


def _scalar(prometheus: PrometheusServer, metric: str) -> float | None:
    result = prometheus.query(f'{metric}{{job="{JOB}"}}')
    if len(result) != 1:
        return None
    return float(result[0]["value"][1])


def test_prometheus_reads_the_graph_cache_the_sidecar_reports(
    sidecar: Sidecar, prometheus: PrometheusServer, traffic: dict[str, Any]
) -> None:
    expected = {
        "cudagraph_hit_rate": float(traffic["hit_rate"]),
        "cudagraph_cached_graphs": float(traffic["cached_graphs"]),
        "cudagraph_hits_total": float(traffic["hits"]),
        "cudagraph_misses_total": float(traffic["misses"]),
    }
    seen: dict[str, float | None] = {}

    def scraped_after_traffic() -> bool | None:
        for metric in expected:
            seen[metric] = _scalar(prometheus, metric)
        if all(
            value is not None and abs(value - expected[m]) <= 1e-9 * max(1.0, abs(expected[m]))
            for m, value in seen.items()
        ):
            return True
        return None

    wait_for(
        scraped_after_traffic,
        timeout=30,
        what=lambda: f"Prometheus to hold the sidecar's /admin/stats values {expected}, saw {seen}",
        processes=[prometheus.process, sidecar.process],
    )
    assert seen["cudagraph_hit_rate"] is not None and seen["cudagraph_hit_rate"] > 0
    assert seen["cudagraph_cached_graphs"] is not None and seen["cudagraph_cached_graphs"] >= 1
    # Nothing changed in between: the sidecar still reports what Prometheus stored.
    assert sidecar.admin_stats()["hits"] == traffic["hits"]


def test_every_dashboard_query_returns_data(
    sidecar: Sidecar, prometheus: PrometheusServer, traffic: dict[str, Any]
) -> None:
    # Evaluated by the real Prometheus over real scrapes: a query naming a series the sidecar
    # does not export, or a label it does not carry, comes back empty.
    queries = [
        (title, substitute_grafana_variables(expr))
        for title, expr in dashboard_queries(load_dashboard())
    ]
    exported = exported_series_names(sidecar.metrics())
    for title, expr in queries:
        unknown = promql_metric_names(expr) - exported
        assert not unknown, f"{title}: {expr} names series the sidecar does not export: {unknown}"

    empty: list[str] = []

    def all_answer() -> bool | None:
        empty.clear()
        empty.extend(f"{t}: {e}" for t, e in queries if not prometheus.query(e))
        return True if not empty else None

    # Rate windows need a few scrapes after the traffic; then every panel has a series.
    wait_for(
        all_answer,
        timeout=45,
        what=lambda: f"every dashboard query to return data; still empty: {empty}",
        processes=[prometheus.process, sidecar.process],
        interval=1.0,
    )


def test_live_metrics_pass_promtool(
    sidecar: Sidecar, traffic: dict[str, Any], workdir: Path
) -> None:
    promtool = prometheus_tool("promtool")
    text = sidecar.metrics()
    assert "cudagraph_hit_rate" in text
    run_tool([promtool, "check", "metrics"], stdin=text)
