"""deploy/kubernetes autoscaling: the HorizontalPodAutoscaler, its prometheus-adapter rules, the
KEDA ScaledObject and the PodMonitor agree with each other and with the Deployment, and every
metric they name is one a real sidecar process exports (one `python -m app serve` with the toy
model, scraped here).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_support import (
    exported_series_names,
    parse_duration,
    prometheus_tool,
    promql_metric_names,
    run_tool,
)
from kube_support import (
    adapter_metric_name,
    adapter_rules,
    build,
    container_port,
    labels_match,
    one,
    render_adapter_query,
    sidecar_pods,
)
from prometheus_client.parser import text_string_to_metric_families
from server_process import SidecarProcess

from app.settings import Settings

HPA_OVERLAY = "autoscaling"
KEDA_OVERLAY = "autoscaling-keda"
QUEUE_METRIC = "sidecar_queue_depth"
REQUEST_COUNT = "sidecar_request_seconds_count"


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    log = tmp_path_factory.mktemp("kube-sidecar") / "server.log"
    with SidecarProcess({"SIDECAR_MODEL_PATH": "toy", "SIDECAR_DEVICE": "cpu"}, log) as server:
        server.wait_ready(timeout_s=120)
        yield server


def _scrape(server: SidecarProcess) -> str:
    response = httpx.get(server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


@pytest.fixture(scope="module")
def exported(sidecar: SidecarProcess) -> set[str]:
    """Every series name the live sidecar exports, after some inference traffic."""
    for text in ["a short one", "a somewhat longer sentence for another shape", "a short one"]:
        response = httpx.post(sidecar.url + "/infer", json={"inputs": [text]}, timeout=30)
        assert response.status_code == 200
    return exported_series_names(_scrape(sidecar))


def _sample(exposition: str, name: str) -> float:
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{name} not in the exposition")


def _metric_type(exposition: str, name: str) -> str:
    found = re.search(rf"^# TYPE {re.escape(name)} (\w+)$", exposition, re.M)
    assert found, f"no TYPE line for {name}"
    return found.group(1)


def _deployment(overlay: str) -> dict[str, Any]:
    return one(build(overlay), "Deployment")


def _keda_triggers() -> list[dict[str, Any]]:
    triggers = one(build(KEDA_OVERLAY), "ScaledObject")["spec"]["triggers"]
    assert isinstance(triggers, list)
    return triggers


def _hpa_targets() -> dict[str, float]:
    """Adapter metric name -> per-pod AverageValue target of the HPA."""
    hpa = one(build(HPA_OVERLAY), "HorizontalPodAutoscaler")
    targets = {}
    for metric in hpa["spec"]["metrics"]:
        assert metric["type"] == "Pods", "per-pod signals only"
        target = metric["pods"]["target"]
        assert target["type"] == "AverageValue"
        targets[metric["pods"]["metric"]["name"]] = float(target["averageValue"])
    return targets


def _adapter_rule_for(series: str) -> dict[str, Any]:
    rules = [r for r in adapter_rules() if r["seriesQuery"].startswith(series + "{")]
    assert len(rules) == 1, f"one adapter rule for {series}"
    return rules[0]


# --- wiring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", [HPA_OVERLAY, KEDA_OVERLAY])
def test_autoscaler_targets_the_deployment(overlay: str) -> None:
    docs = build(overlay)
    deployment = one(docs, "Deployment")
    kind = "HorizontalPodAutoscaler" if overlay == HPA_OVERLAY else "ScaledObject"
    scaler = one(docs, kind)
    ref = scaler["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    assert scaler["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    spec = scaler["spec"]
    low, high = (
        (spec["minReplicas"], spec["maxReplicas"])
        if overlay == HPA_OVERLAY
        else (spec["minReplicaCount"], spec["maxReplicaCount"])
    )
    # At least two: the disruption budget lets one go while the other serves.
    assert 2 <= low < high


def test_hpa_metrics_are_published_by_the_adapter_rules() -> None:
    published = {adapter_metric_name(rule): rule for rule in adapter_rules()}
    for name in _hpa_targets():
        assert name in published, f"HPA metric {name} is not published by any adapter rule"


def test_adapter_rules_are_per_pod() -> None:
    for rule in adapter_rules():
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
        assert 'namespace!=""' in rule["seriesQuery"] and 'pod!=""' in rule["seriesQuery"]
        # Grouped by pod, so the HPA gets one value per pod whatever else labels the series.
        assert rule["metricsQuery"].startswith("sum by (<<.GroupBy>>)")


def test_keda_and_hpa_scale_on_the_same_signals_and_targets() -> None:
    targets = _hpa_targets()
    by_series = {
        series: targets[adapter_metric_name(_adapter_rule_for(series))]
        for series in (QUEUE_METRIC, REQUEST_COUNT)
    }
    keda = {}
    for trigger in _keda_triggers():
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        names = promql_metric_names(trigger["metadata"]["query"])
        assert len(names) == 1, names
        keda[names.pop()] = float(trigger["metadata"]["threshold"])
    assert keda == by_series
    hpa = one(build(HPA_OVERLAY), "HorizontalPodAutoscaler")["spec"]
    scaled = one(build(KEDA_OVERLAY), "ScaledObject")["spec"]
    assert scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )


def test_queue_depth_target_is_half_a_batch() -> None:
    # The reasoning in docs/kubernetes.md#autoscaling: scale out once a pod holds more than
    # half a full batch waiting on average. A new batch size default means a new target.
    target = _hpa_targets()[adapter_metric_name(_adapter_rule_for(QUEUE_METRIC))]
    assert target == Settings.model_fields["max_batch_size"].default / 2


def test_keda_queries_select_the_deployments_pods() -> None:
    deployment = _deployment(KEDA_OVERLAY)
    name = deployment["metadata"]["name"]
    namespace = deployment["metadata"]["namespace"]
    for trigger in _keda_triggers():
        query = trigger["metadata"]["query"]
        assert re.findall(r'namespace="([^"]+)"', query) == [namespace], query
        (pattern,) = re.findall(r'pod=~"([^"]+)"', query)
        # PromQL regexes are anchored: the Deployment's pods, not another Deployment's.
        assert re.fullmatch(pattern, f"{name}-5d8f9c7b6d-x7k2p")
        assert not re.fullmatch(pattern, f"{name}-canary-5d8f9c7b6d-x7k2p")
        assert not re.fullmatch(pattern, f"other-{name}-5d8f9c7b6d-x7k2p")


@pytest.mark.parametrize("overlay", [HPA_OVERLAY, KEDA_OVERLAY])
def test_podmonitor_scrapes_the_sidecar_port(overlay: str) -> None:
    docs = build(overlay)
    deployment = one(docs, "Deployment")
    monitor = one(docs, "PodMonitor")
    assert monitor["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(monitor["spec"]["selector"], labels)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (_, container) = next(sidecar_pods(docs))
    assert container_port(container, endpoint["port"]) == container["ports"][0]["containerPort"]
    assert endpoint["path"] == "/metrics"
    interval = parse_duration(endpoint["interval"])
    assert parse_duration(endpoint["scrapeTimeout"]) < interval
    # Every rate/avg window of the adapter and KEDA holds at least two scrapes.
    queries = [r["metricsQuery"] for r in adapter_rules()]
    queries += [t["metadata"]["query"] for t in _keda_triggers()]
    for query in queries:
        for window in re.findall(r"\[(\w+)\]", query):
            assert parse_duration(window) >= 2 * interval, (query, endpoint["interval"])


# --- against a live sidecar -------------------------------------------------------------------


def test_adapter_rules_name_exported_series(exported: set[str]) -> None:
    for rule in adapter_rules():
        rendered = render_adapter_query(rule, "cudagraph-sidecar", "cudagraph-sidecar-abc-12345")
        names = promql_metric_names(rule["seriesQuery"]) | promql_metric_names(rendered)
        assert names and names <= exported, f"not exported: {sorted(names - exported)}"


def test_keda_triggers_name_exported_series(exported: set[str]) -> None:
    for trigger in _keda_triggers():
        names = promql_metric_names(trigger["metadata"]["query"])
        assert names and names <= exported, f"not exported: {sorted(names - exported)}"


def test_podmonitor_path_serves_prometheus_text(sidecar: SidecarProcess) -> None:
    monitor = one(build(HPA_OVERLAY), "PodMonitor")
    path = monitor["spec"]["podMetricsEndpoints"][0]["path"]
    response = httpx.get(sidecar.url + path, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_signals_have_the_types_the_queries_assume(sidecar: SidecarProcess) -> None:
    text = _scrape(sidecar)
    # avg_over_time of a gauge; rate of a histogram's count.
    assert _metric_type(text, QUEUE_METRIC) == "gauge"
    assert _metric_type(text, REQUEST_COUNT.removesuffix("_count")) == "histogram"


def test_request_rate_counts_inference_requests_only(sidecar: SidecarProcess) -> None:
    # Probes and scrapes (every few seconds per pod) must not look like load to the autoscaler.
    before = _sample(_scrape(sidecar), REQUEST_COUNT)
    for path in ("/healthz", "/readyz", "/healthz"):
        assert httpx.get(sidecar.url + path, timeout=10).status_code == 200
    after_probes = _sample(_scrape(sidecar), REQUEST_COUNT)
    assert after_probes == before
    for route, body in (
        ("/infer", {"inputs": ["one"]}),
        ("/v1/embeddings", {"input": "two", "model": "x"}),
    ):
        assert httpx.post(sidecar.url + route, json=body, timeout=30).status_code == 200
    assert _sample(_scrape(sidecar), REQUEST_COUNT) == before + 2


def test_queries_are_valid_promql(tmp_path: Path) -> None:
    # Prometheus' own parser (as recording rules): the rendered adapter queries and KEDA's.
    promtool = prometheus_tool("promtool")
    exprs = [render_adapter_query(r, "ns", "pod-a") for r in adapter_rules()]
    exprs += [r["seriesQuery"] for r in adapter_rules()]
    exprs += [t["metadata"]["query"] for t in _keda_triggers()]
    rules = [{"record": f"autoscaling:query_{n}", "expr": e} for n, e in enumerate(exprs)]
    path = tmp_path / "autoscaling-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "autoscaling", "rules": rules}]}))
    output = run_tool([promtool, "check", "rules", str(path)])
    assert f"SUCCESS: {len(rules)} rules found" in output, output
