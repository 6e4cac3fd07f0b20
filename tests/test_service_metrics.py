"""GET /metrics: names, types and labels as issue 4 lists them, values moving with traffic,
bounded label values, one registry per app, and `promtool check metrics` where it exists."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from app_support import wait_captured, wait_ready
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.settings import load_settings
from tests.front_end_support import make_app

# family name (as the parser reports it) -> (type, label names)
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "cudagraph_hit_rate": ("gauge", set()),
    "cudagraph_hits": ("counter", set()),
    "cudagraph_misses": ("counter", set()),
    "cudagraph_replays": ("counter", set()),
    "cudagraph_captures": ("counter", set()),
    "cudagraph_capture_failures": ("counter", set()),
    "cudagraph_evictions": ("counter", set()),
    "cudagraph_capture_seconds": ("histogram", set()),
    "cudagraph_cached_graphs": ("gauge", set()),
    "cudagraph_memory_bytes": ("gauge", set()),
    "cudagraph_cached_descriptor_replays": (
        "gauge",
        {"num_tokens", "num_reqs", "uniform_decode"},
    ),
    "cudagraph_hot_shape_requests": ("gauge", {"rank", "num_tokens", "num_reqs", "uniform_decode"}),
    "sidecar_requests": ("counter", {"route", "status"}),
    "sidecar_request_seconds": ("histogram", set()),
    "sidecar_batch_size": ("histogram", set()),
    "sidecar_request_items": ("histogram", set()),
    "sidecar_queue_depth": ("gauge", set()),
    "sidecar_queue_wait_seconds": ("histogram", set()),
    "sidecar_padding_ratio": ("histogram", set()),
    "sidecar_rejected": ("counter", {"reason"}),
}


def scrape(client: TestClient) -> dict[str, Any]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(resp.text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    family = sample_name
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in families:
            family = sample_name[: -len(suffix)]
    found = [
        s.value
        for s in families[family].samples
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(found)


ADMIN = {"Authorization": "Bearer t"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # FULL: graphs on the CPU too; no idle prediction, so capture counts are traffic's alone
    settings = load_settings(
        model_path="toy",
        admin_token="t",
        graph_mode="FULL",
        capture_threshold=2,
        idle_prewarm_top_k=0,
    )
    with TestClient(make_app(settings), raise_server_exceptions=False) as c:
        wait_ready(c, timeout_s=30)
        yield c


def test_every_metric_has_its_name_type_and_labels(client: TestClient) -> None:
    client.post("/infer", json={"inputs": ["warm", "up"]})
    client.post("/infer", json={"inputs": ["warm", "up"]})  # second sight: captured after
    wait_captured(client, ADMIN)
    families = scrape(client)
    for name, (kind, labels) in EXPECTED.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, (name, family.type)
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    # Counters are exposed with the _total suffix (PromQL rate() works on them).
    text = client.get("/metrics").text
    for name, (kind, _) in EXPECTED.items():
        if kind == "counter":
            assert f"\n{name}_total" in text, name


def test_values_move_with_traffic(client: TestClient) -> None:
    before = scrape(client)
    route = {"route": "/infer", "status": "200"}
    texts = ["the quick brown fox jumps"]  # one text: shape 1 x 32 tokens (toy tokenizer)
    for _ in range(4):
        assert client.post("/infer", json={"inputs": texts}).status_code == 200
        wait_captured(client, ADMIN)  # the engine's idle gap after each answer
    assert client.post("/infer", json={"inputs": []}).status_code == 422
    after = scrape(client)

    def delta(sample: str, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    assert delta("sidecar_requests_total", **route) == 4
    assert delta("cudagraph_eager_runs_total") == 2
    assert delta("sidecar_requests_total", route="/infer", status="422") == 1
    assert delta("sidecar_request_seconds_count") == 5
    assert delta("sidecar_batch_size_count") == 4 and delta("sidecar_batch_size_sum") == 4
    assert delta("sidecar_request_items_count") == 4 and delta("sidecar_request_items_sum") == 4
    assert delta("sidecar_queue_wait_seconds_count") == 4
    assert delta("sidecar_padding_ratio_count") == 4
    assert value(after, "sidecar_queue_depth") == 0
    # Graph cache: 1 x 32 missed twice (eager; captured in the gap after the 2nd), then replayed.
    assert delta("cudagraph_misses_total") == 2
    assert delta("cudagraph_captures_total") == 1
    assert delta("cudagraph_hits_total") == 2 and delta("cudagraph_replays_total") == 2
    assert delta("cudagraph_capture_seconds_count") == 1
    assert delta("cudagraph_cached_graphs") == 1 and delta("cudagraph_memory_bytes") > 0
    assert 0 < value(after, "cudagraph_hit_rate") < 1
    shape = {"num_tokens": "32", "num_reqs": "1", "uniform_decode": "false"}
    assert value(after, "cudagraph_cached_descriptor_replays", **shape) == 2
    hot = after["cudagraph_hot_shape_requests"].samples
    assert [s.labels["rank"] for s in hot] == [str(i) for i in range(1, len(hot) + 1)]
    (mine,) = [s for s in hot if all(s.labels[k] == v for k, v in shape.items())]
    assert mine.value == 4  # lookups of that shape
    assert [s.value for s in hot] == sorted((s.value for s in hot), reverse=True)
    # Histogram buckets are cumulative and end in +Inf == count.
    buckets = [s for s in after["cudagraph_capture_seconds"].samples if s.name.endswith("_bucket")]
    assert buckets[-1].labels["le"] == "+Inf"
    assert buckets[-1].value == value(after, "cudagraph_capture_seconds_count")
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)


def test_clearing_the_cache_shows_in_the_gauges(client: TestClient) -> None:
    client.post("/infer", json={"inputs": ["abc"]})
    client.post("/infer", json={"inputs": ["abc"]})
    wait_captured(client, ADMIN)
    assert value(scrape(client), "cudagraph_cached_graphs") >= 1
    client.delete("/admin/graphs", headers=ADMIN)
    after = scrape(client)
    assert value(after, "cudagraph_cached_graphs") == 0
    assert value(after, "cudagraph_memory_bytes") == 0
    assert after["cudagraph_cached_descriptor_replays"].samples == []


def test_label_values_never_come_from_requests(client: TestClient) -> None:
    secret = "do-not-echo-this-text"
    client.post("/infer", json={"inputs": [secret]})
    client.get(f"/{secret}")
    client.post("/v1/embeddings?x=" + secret, json={"input": secret})
    text = client.get("/metrics").text
    assert secret not in text
    families = scrape(client)
    routes = {s.labels["route"] for s in families["sidecar_requests"].samples}
    assert "other" in routes
    assert routes <= {
        "/infer", "/v1/embeddings", "/admin/prewarm", "/admin/graphs", "/admin/hot-shapes",
        "/admin/stats", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json",
        "/docs/oauth2-redirect", "/redoc", "other",
    }  # fmt: skip
    reasons = {s.labels["reason"] for s in families["sidecar_rejected"].samples}
    assert reasons == {"queue_full", "timeout", "draining", "not_ready"}


def test_each_app_has_its_own_registry() -> None:
    s = load_settings(model_path="toy")
    with TestClient(make_app(s)) as a, TestClient(make_app(s)) as b:
        for c in (a, b):
            wait_ready(c)
        a.post("/infer", json={"inputs": ["only a"]})
        assert value(scrape(a), "sidecar_requests_total", route="/infer") == 1
        assert value(scrape(b), "sidecar_requests_total", route="/infer") == 0


def test_metrics_before_the_model_is_loaded_are_zeros() -> None:
    app = make_app(load_settings(model_path="toy"))
    client = TestClient(app)  # no lifespan: nothing loaded
    families = scrape(client)
    assert value(families, "cudagraph_hits_total") == 0
    assert value(families, "cudagraph_cached_graphs") == 0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_check_metrics(client: TestClient) -> None:
    for _ in range(3):
        client.post("/infer", json={"inputs": ["lint me", "twice"]})
    text = client.get("/metrics").text
    out = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
