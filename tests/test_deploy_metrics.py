"""The dashboard against the real app: every series a Grafana query names is one the service
exports, and the exposition passes `promtool check metrics`.

The app runs in-process over ASGI with its lifespan (toy model, CPU), gets a little traffic,
and its /metrics text is the source of truth for the exported names.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from app_support import wait_ready
from deploy_support import (
    dashboard_queries,
    exported_series_names,
    load_dashboard,
    prometheus_tool,
    promql_metric_names,
    run_tool,
)
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import load_settings

ADMIN_TOKEN = "deploy-metrics-token"


@pytest.fixture(scope="module")
def metrics_text() -> Iterator[str]:
    settings = load_settings(model_path="toy", device="cpu", admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        wait_ready(client, timeout_s=120)
        # Same shape repeatedly (captured, then replayed), plus another shape and the OpenAI
        # route, so labelled series (descriptors, hot shapes, routes) have children.
        for text in ["a short one"] * 6 + ["a somewhat longer sentence for a second shape"] * 3:
            assert client.post("/infer", json={"inputs": [text]}).status_code == 200
        assert client.post("/v1/embeddings", json={"input": "hi", "model": "x"}).status_code == 200
        assert client.post("/infer", json={"inputs": []}).status_code == 422
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        yield response.text


def test_exported_names_parser() -> None:
    text = (
        '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 0\n'
        '# TYPE c_total counter\n# TYPE g gauge\ng{a="b"} 1\n'
    )
    assert exported_series_names(text) == {"h_bucket", "h_sum", "h_count", "c_total", "g"}


def test_dashboard_names_only_exported_series(metrics_text: str) -> None:
    exported = exported_series_names(metrics_text)
    problems = []
    for title, expr in dashboard_queries(load_dashboard()):
        names = promql_metric_names(expr)
        assert names, f"{title}: {expr} selects no metric"
        unknown = sorted(names - exported)
        if unknown:
            problems.append(f"{title}: {unknown} in {expr}")
    assert not problems, "dashboard queries name series /metrics does not export:\n" + "\n".join(
        problems
    )


def test_metrics_pass_promtool_check_metrics(metrics_text: str) -> None:
    promtool = prometheus_tool("promtool")
    # promtool prints lint findings and exits non-zero on any; run_tool fails with them.
    run_tool([promtool, "check", "metrics"], stdin=metrics_text)


def test_issue_metric_families_are_exported(metrics_text: str) -> None:
    # The families the dashboard is built on (issue 4), as Prometheus stores them.
    exported = exported_series_names(metrics_text)
    expected = {
        "cudagraph_hit_rate",
        "cudagraph_hits_total",
        "cudagraph_misses_total",
        "cudagraph_replays_total",
        "cudagraph_captures_total",
        "cudagraph_capture_failures_total",
        "cudagraph_evictions_total",
        "cudagraph_capture_seconds_bucket",
        "cudagraph_cached_graphs",
        "cudagraph_memory_bytes",
        "cudagraph_cached_descriptor_replays",
        "cudagraph_hot_shape_requests",
        "sidecar_requests_total",
        "sidecar_request_seconds_bucket",
        "sidecar_batch_size_bucket",
        "sidecar_queue_depth",
        "sidecar_queue_wait_seconds_bucket",
        "sidecar_padding_ratio_bucket",
        "sidecar_rejected_total",
    }
    assert not expected - exported, sorted(expected - exported)
