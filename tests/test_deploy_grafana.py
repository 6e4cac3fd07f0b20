"""Grafana provisioning and the dashboard: structure, wiring, PromQL validity and coverage.

That each query names only metrics the service really exports is checked against the live
app's /metrics in test_deploy_metrics.py; here the dashboard is checked on its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    GRAFANA_DATASOURCES,
    GRAFANA_PROVIDERS,
    PROMETHEUS_CONFIG,
    dashboard_queries,
    iter_panels,
    load_dashboard,
    prometheus_tool,
    promql_metric_names,
    run_tool,
    substitute_grafana_variables,
)

# What the dashboard must show (issue 5), as the series a panel has to query for it.
REQUIRED = {
    "hit rate": {"cudagraph_hit_rate"},
    "hit rate, windowed": {"cudagraph_hits_total", "cudagraph_misses_total"},
    "cached graphs": {"cudagraph_cached_graphs"},
    "hot shapes": {"cudagraph_hot_shape_requests"},
    "capture time": {"cudagraph_capture_seconds_bucket"},
    "graph memory": {"cudagraph_memory_bytes"},
    "request latency": {"sidecar_request_seconds_bucket"},
    "batch size": {"sidecar_batch_size_bucket"},
    "queue depth": {"sidecar_queue_depth"},
    "rejections": {"sidecar_rejected_total"},
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(GRAFANA_DATASOURCES.glob("*.yml"))]
    sources = [ds for doc in docs for ds in doc["datasources"]]
    assert len(sources) == 1, sources
    return sources[0]


def _content_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in iter_panels(dashboard) if p["type"] != "row"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('rate(a_total{job="x", le=~"0.5"}[5m])', {"a_total"}),
        (
            "histogram_quantile(0.99, sum by (le, route) (rate(h_bucket[$__rate_interval])))",
            {"h_bucket"},
        ),
        ("sum without (instance) (x) / ignoring(code) group_left(foo) y > bool 1e-3", {"x", "y"}),
        ('{__name__="by_name", job="j"} offset 5m', {"by_name"}),
        ('label_replace(m, "dst", "$1", "src", "(.*)")', {"m"}),
        ("topk(3, sort_desc(m_1:rate5m)) and on(instance) m2", {"m_1:rate5m", "m2"}),
        ("vector(1) + Inf - NaN", set()),
    ],
)
def test_promql_metric_name_extraction(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "cudagraph-sidecar"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert "id" not in dashboard or dashboard["id"] is None, "provisioned dashboards carry no id"


def test_panels_have_unique_ids_and_fit_the_grid(dashboard: dict[str, Any]) -> None:
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0 and grid["y"] >= 0, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_query_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], datasource: dict[str, Any]
) -> None:
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for panel in _content_panels(dashboard):
        assert panel["datasource"] == expected, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target.get("datasource", expected) == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == expected, variable["name"]


def test_queries_select_the_job_prometheus_scrapes(dashboard: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    for title, expr in dashboard_queries(dashboard):
        selectors = re.findall(r"\{([^}]*)\}", expr)
        assert selectors, f"{title}: {expr} selects no job"
        for selector in selectors:
            job = re.search(r'job="([^"]+)"', selector)
            assert job and job[1] in jobs, f"{title}: {{{selector}}} not a scraped job {jobs}"
            assert 'instance=~"$instance"' in selector, f"{title}: ignores the replica picker"


def test_dashboard_covers_the_required_signals(dashboard: dict[str, Any]) -> None:
    queried: set[str] = set()
    for _, expr in dashboard_queries(dashboard):
        queried |= promql_metric_names(expr)
    missing = {topic: sorted(names - queried) for topic, names in REQUIRED.items()}
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}


def test_latency_batch_and_capture_panels_use_quantiles(dashboard: dict[str, Any]) -> None:
    for metric in (
        "sidecar_request_seconds_bucket",
        "sidecar_batch_size_bucket",
        "cudagraph_capture_seconds_bucket",
    ):
        exprs = [e for _, e in dashboard_queries(dashboard) if metric in promql_metric_names(e)]
        assert exprs, metric
        for expr in exprs:
            # Buckets must be summed by `le` (across replicas) inside histogram_quantile.
            assert re.search(r"histogram_quantile\(0?\.\d+,\s*sum by \(le\)", expr), expr


def test_rejections_are_split_by_reason(dashboard: dict[str, Any]) -> None:
    exprs = [
        e
        for _, e in dashboard_queries(dashboard)
        if "sidecar_rejected_total" in promql_metric_names(e)
    ]
    assert any(re.search(r"by \((?:[^)]*\b)?reason\b", e) for e in exprs), exprs


def test_every_expression_is_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    # promtool parses each expression with Prometheus' own parser (as a recording rule), after
    # Grafana's variables are replaced by values it would send.
    promtool = prometheus_tool("promtool")
    rules = [
        {"record": f"dashboard:query_{n}", "expr": substitute_grafana_variables(expr)}
        for n, (_, expr) in enumerate(dashboard_queries(dashboard))
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_tool([promtool, "check", "rules", str(path)])
    assert f"SUCCESS: {len(rules)} rules found" in output, output


def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    promtool = prometheus_tool("promtool")
    path = tmp_path / "broken.yml"
    rule = {"record": "x:y", "expr": "sum by (le (rate(x[5m]))"}
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [rule]}]}))
    with pytest.raises(pytest.fail.Exception, match="parse error"):
        run_tool([promtool, "check", "rules", str(path)])


def test_replica_variable_lists_sidecar_instances(dashboard: dict[str, Any]) -> None:
    (variable,) = dashboard["templating"]["list"]
    assert variable["name"] == "instance"
    match = re.fullmatch(r"label_values\((.+),\s*instance\)", variable["definition"])
    assert match, variable["definition"]
    assert promql_metric_names(match[1]) == {"cudagraph_cached_graphs"}
    assert variable["allValue"] == ".*" and variable["includeAll"] is True


def test_datasource_provisioning(datasource: dict[str, Any]) -> None:
    assert datasource["type"] == "prometheus"
    assert datasource["access"] == "proxy"
    assert datasource["isDefault"] is True
    # $__rate_interval is 4 x this; it must not be shorter than the real scrape interval.
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


def test_dashboard_provider() -> None:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(GRAFANA_PROVIDERS.glob("*.yml"))]
    assert {doc["apiVersion"] for doc in docs} == {1}
    (provider,) = [prov for doc in docs for prov in doc["providers"]]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False, "git is the source of truth for the dashboard"
    assert provider["options"]["path"].startswith("/")
