"""deploy/kubernetes: every overlay builds with `kubectl kustomize`, validates against the
Kubernetes OpenAPI schemas, and agrees with the code it deploys (routes, port, settings, drain,
user, image).

The autoscaling resources (HPA, prometheus-adapter rules, KEDA, PodMonitor) and the metrics
they name are checked against a live sidecar in test_deploy_kubernetes_autoscaling.py.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploy_support import COMPOSE_FILE, load_compose
from fastapi.testclient import TestClient
from kube_support import (
    COMPONENTS_DIR,
    CUSTOM_SCHEMAS,
    MIN_KUBERNETES,
    OVERLAYS,
    OVERLAYS_DIR,
    all_containers,
    build,
    compose_kustomization,
    container_port,
    dockerfile_facts,
    env_entry,
    env_values,
    is_sidecar_image,
    kustomize,
    labels_match,
    of_kind,
    one,
    pod_spec,
    prestop_seconds,
    probe_budget_s,
    sidecar_pods,
    validate_custom,
    volume_for_path,
)

from app.main import create_app
from app.settings import Settings, env_name, load_settings, unknown_env_vars

KUBE_VERSIONS = (MIN_KUBERNETES, "1.32", kubernetes_validate.utils.latest_version())
# Left after the drain for the lifespan to drain the queue, save the profile and exit.
GRACE_MARGIN_S = 10
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}


@pytest.fixture(scope="module")
def app_routes() -> dict[str, set[str]]:
    """Path -> HTTP methods of the real app (toy model), from its OpenAPI document, which
    lists every route with its prefix as served."""
    app = create_app(load_settings(model_path="toy"))
    paths = app.openapi()["paths"]
    return {path: {method.upper() for method in ops} for path, ops in paths.items()}


def _all_sidecar_pods() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    found = [(o, s, c) for o in OVERLAYS for s, c in sidecar_pods(build(o))]
    assert {o for o, _, _ in found} == set(OVERLAYS), "an overlay runs no sidecar container"
    return found


# --- build ---------------------------------------------------------------------------------------


def test_every_overlay_directory_is_tested() -> None:
    on_disk = {p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file()}
    assert on_disk == set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_into_one_namespace(overlay: str) -> None:
    docs = build(overlay)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate resources: {names}"
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] not in CLUSTER_SCOPED}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


def test_base_builds() -> None:
    docs = kustomize(OVERLAYS_DIR.parent / "base")
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_profile_pvc_component_replaces_the_emptydir(tmp_path: Path) -> None:
    directory = compose_kustomization(
        tmp_path / "shared-profile",
        "namespace: cudagraph-sidecar\n"
        "resources:\n  - {kube}/overlays/standalone\n"
        "components:\n  - {kube}/components/profile-pvc\n",
    )
    docs = kustomize(directory)
    pvc = one(docs, "PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    spec, container = next(sidecar_pods(docs))
    volume = volume_for_path(spec, container, env_values(container)["SIDECAR_PROFILE_PATH"])
    assert volume == {
        "name": "profile",
        "persistentVolumeClaim": {"claimName": pvc["metadata"]["name"]},
    }
    for doc in docs:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_every_component_is_used() -> None:
    used = set()
    for path in OVERLAYS_DIR.glob("*/kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text(encoding="utf-8"))
        used |= {Path(c).name for c in kustomization.get("components", [])}
    components = {p.name for p in COMPONENTS_DIR.iterdir() if p.is_dir()}
    # profile-pvc needs a ReadWriteMany storage class, so no overlay applies it by default; it
    # is built above on top of the standalone overlay.
    assert components - used == {"profile-pvc"}


# --- schemas -------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    problems = []
    for doc in build(overlay):
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            if (doc["apiVersion"], doc["kind"]) in CUSTOM_SCHEMAS:
                validate_custom(doc, version)
            else:
                kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.utils.SchemaNotFoundError as exc:
            problems.append(f"{what}: {exc.message}")
        except jsonschema.ValidationError as exc:
            path = ".".join(str(p) for p in exc.absolute_path)
            problems.append(f"{what} at {path}: {exc.message}")
    assert not problems, "\n".join(problems)


def _deployment(overlay: str) -> dict[str, Any]:
    return one(build(overlay), "Deployment")


def test_strict_validation_catches_a_misspelt_field() -> None:
    doc = _deployment("standalone")
    pod_spec(doc)["terminationGracePeriodSecond"] = 60
    with pytest.raises(jsonschema.ValidationError, match="terminationGracePeriodSecond"):
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)
    doc = _deployment("standalone")
    pod_spec(doc)["containers"][0]["resources"]["limits"]["memory"] = ["8Gi"]
    with pytest.raises(jsonschema.ValidationError):
        kubernetes_validate.validate(doc, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    ("overlay", "kind", "path", "value"),
    [
        ("autoscaling", "PodMonitor", ("spec", "podMetricsEndpoints", 0, "intervall"), "15s"),
        ("autoscaling", "PodMonitor", ("spec", "podMetricsEndpoints", 0, "interval"), "15"),
        ("autoscaling-keda", "ScaledObject", ("spec", "triggers", 0, "metadata", "threshold"), 16),
        ("autoscaling-keda", "ScaledObject", ("spec", "scaleTargetRef", "nam"), "x"),
        ("autoscaling-keda", "ScaledObject", ("spec", "triggers", 1, "metricType"), "Average"),
    ],
)
def test_custom_resource_checks_catch_mistakes(
    overlay: str, kind: str, path: tuple[Any, ...], value: Any
) -> None:
    doc = one(build(overlay), kind)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(doc, KUBE_VERSIONS[-1])


def test_custom_resource_checks_cover_the_hpa_behaviour() -> None:
    doc = one(build("autoscaling-keda"), "ScaledObject")
    behavior = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleDown"]["policies"][0]["periodSecond"] = 60
    with pytest.raises(jsonschema.ValidationError, match="periodSecond"):
        validate_custom(doc, KUBE_VERSIONS[-1])


# --- consistency with the code -------------------------------------------------------------------


def test_probes_use_the_apps_health_routes(app_routes: dict[str, set[str]]) -> None:
    for overlay, _, container in _all_sidecar_pods():
        probes = {k: container.get(k) for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert all(probes.values()), f"{overlay}: {container['name']} lacks a probe"
        # Ready means warm (model loaded, start-up prewarm run); alive is only the event loop.
        expected = {
            "startupProbe": "/readyz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/healthz",
        }
        for kind, probe in probes.items():
            path = probe["httpGet"]["path"]
            assert path == expected[kind], (overlay, kind, path)
            assert "GET" in app_routes.get(path, set()), f"{path} is not a GET route of the app"


def test_probe_routes_answer_as_the_probes_expect_before_the_model_loads() -> None:
    # Without its lifespan the app has not loaded the model: alive, not ready (503), which is
    # what keeps the startup probe waiting and the pod out of the Service.
    client = TestClient(create_app(load_settings(model_path="toy")))
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"


def test_container_port_is_the_services_port() -> None:
    default_port = Settings.model_fields["port"].default
    facts = dockerfile_facts()
    assert default_port == facts["port"] == 8000
    for overlay, _, container in _all_sidecar_pods():
        ports = [p["containerPort"] for p in container["ports"]]
        assert ports == [facts["port"]], (overlay, ports)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container[kind]["httpGet"]["port"]
            assert container_port(container, port) == facts["port"], (overlay, kind, port)


@pytest.mark.parametrize("overlay", ["standalone", "cpu"])
def test_service_and_disruption_budget_select_the_pods(overlay: str) -> None:
    docs = build(overlay)
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"], labels)
    service = one(docs, "Service")
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    container = next(c for c in pod_spec(deployment)["containers"] if is_sidecar_image(c["image"]))
    for port in service["spec"]["ports"]:
        assert container_port(container, port["targetPort"]) == dockerfile_facts()["port"]
    pdb = one(docs, "PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"], labels)
    # One pod at a time, and never a budget that blocks every drain of a single replica.
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}


def test_every_sidecar_variable_is_a_real_setting_and_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    known = {env_name(name) for name in Settings.model_fields}
    for overlay, spec, container in _all_sidecar_pods():
        for other in all_containers(spec):
            names = {e["name"] for e in other.get("env", [])}
            unknown = {n for n in names if n.upper().startswith("SIDECAR_")} - known
            assert not unknown, f"{overlay}/{other['name']}: no such setting {sorted(unknown)}"
        values = env_values(container)
        assert not unknown_env_vars(values)
        for name in [n for n in os.environ if n.startswith("SIDECAR_")]:
            monkeypatch.delenv(name)
        for name, value in values.items():
            monkeypatch.setenv(name, value)
        settings = load_settings()  # the values parse (device syntax included)
        assert str(settings.profile_path) == values["SIDECAR_PROFILE_PATH"]


def test_admin_token_comes_from_a_secret() -> None:
    for overlay, _, container in _all_sidecar_pods():
        entry = env_entry(container, env_name("admin_token"))
        assert entry is not None, f"{overlay}: no admin token"
        assert "value" not in entry, f"{overlay}: a literal admin token"
        ref = entry["valueFrom"]["secretKeyRef"]
        # Optional: without the Secret the admin API stays disabled (403) and the pod starts.
        assert ref == {"name": "cudagraph-sidecar-admin", "key": "token", "optional": True}


def _setting(values: dict[str, str], name: str) -> float:
    return float(values.get(env_name(name), Settings.model_fields[name].default))


def test_grace_period_outlasts_prestop_and_drain() -> None:
    for overlay, spec, container in _all_sidecar_pods():
        values = env_values(container)
        drain = _setting(values, "drain_delay_s") + _setting(values, "graceful_timeout_s")
        prestop = prestop_seconds(container)
        grace = spec["terminationGracePeriodSeconds"]
        # The grace period starts before preStop runs; SIGTERM comes when it returns.
        assert grace >= prestop + drain + GRACE_MARGIN_S, (overlay, grace, prestop, drain)


def test_prestop_covers_the_endpoint_update_of_a_service_backend() -> None:
    for overlay in ("standalone", "cpu"):
        _, container = next(sidecar_pods(build(overlay)))
        assert prestop_seconds(container) >= 5, overlay
    # A native sidecar is stopped after the application: a sleep there only delays the pod.
    _, container = next(sidecar_pods(build("sidecar")))
    assert prestop_seconds(container) == 0


def test_startup_probe_allows_for_loading_and_the_prewarm() -> None:
    start_period = dockerfile_facts()["start_period_s"]
    for overlay, _, container in _all_sidecar_pods():
        budget = probe_budget_s(container["startupProbe"])
        # At least the image's HEALTHCHECK start period (model load, CUDA start-up, ladder).
        assert budget >= start_period, (overlay, budget, start_period)
        # Liveness only starts after it, so a slow start is never killed as a hang.
        assert container["livenessProbe"].get("initialDelaySeconds", 0) == 0


def test_pods_run_non_root_on_a_read_only_root_filesystem() -> None:
    facts = dockerfile_facts()
    for overlay, spec, _ in _all_sidecar_pods():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False, overlay
        for container in all_containers(spec):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, (overlay, container["name"])
            assert sc["readOnlyRootFilesystem"] is True, (overlay, container["name"])
            assert sc["allowPrivilegeEscalation"] is False, (overlay, container["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (overlay, container["name"])
            uid = sc.get("runAsUser", pod.get("runAsUser"))
            assert uid == facts["uid"] and uid != 0, (overlay, container["name"], uid)


def test_what_the_sidecar_writes_is_on_writable_volumes() -> None:
    for overlay, spec, container in _all_sidecar_pods():
        values = env_values(container)
        # The profile is saved atomically through a temporary file in its own directory.
        profile_dir = str(Path(values[env_name("profile_path")]).parent)
        assert volume_for_path(spec, container, profile_dir)["name"] == "profile"
        for path in ("/tmp", values["XDG_CACHE_HOME"]):
            assert "emptyDir" in volume_for_path(spec, container, path), (overlay, path)
        # fsGroup makes the volumes writable for the image's user.
        assert spec["securityContext"]["fsGroup"] == dockerfile_facts()["gid"], overlay


def test_no_service_links_reach_the_settings() -> None:
    # A Service named "sidecar" would inject SIDECAR_PORT=tcp://..., which the settings read.
    for overlay, spec, _ in _all_sidecar_pods():
        assert spec["enableServiceLinks"] is False, overlay


def test_image_is_what_docker_compose_builds() -> None:
    image = load_compose(COMPOSE_FILE)["services"]["sidecar"]["image"]
    for overlay, _, container in _all_sidecar_pods():
        assert container["image"] == image, overlay
        # The image's own command: one process, --host 0.0.0.0 --port 8000.
        assert "command" not in container and "args" not in container, overlay


def test_standalone_takes_one_gpu_and_cpu_takes_none() -> None:
    _, gpu = next(sidecar_pods(build("standalone")))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_values(gpu)["SIDECAR_DEVICE"] == "cuda"
    for overlay in ("cpu", "sidecar"):
        docs = build(overlay)
        for spec, container in sidecar_pods(docs):
            assert env_values(container)["SIDECAR_DEVICE"] == "cpu", overlay
            threads = int(env_values(container)["SIDECAR_NUM_THREADS"])
            assert threads <= float(container["resources"]["requests"]["cpu"]), overlay
            assert "tolerations" not in spec, overlay
            for c in all_containers(spec):
                assert "nvidia.com/gpu" not in str(c.get("resources")), (overlay, c["name"])


def test_sidecar_overlay_runs_a_native_sidecar_called_on_localhost() -> None:
    docs = build("sidecar")
    assert not of_kind(docs, "Service"), "the in-pod sidecar needs no Service"
    spec = pod_spec(one(docs, "Deployment"))
    sidecars = [c for c in spec.get("initContainers", []) if is_sidecar_image(c["image"])]
    assert len(sidecars) == 1 and sidecars[0]["restartPolicy"] == "Always"
    assert not any(is_sidecar_image(c["image"]) for c in spec["containers"])
    port = sidecars[0]["ports"][0]["containerPort"]
    assert any(
        e.get("value") == f"http://127.0.0.1:{port}"
        for c in spec["containers"]
        for e in c.get("env", [])
    ), "the application does not call the sidecar on localhost"


def test_in_pod_sidecar_is_the_standalone_container() -> None:
    # The same container as the cpu overlay's, but for its port name and its preStop hook.
    _, cpu = next(sidecar_pods(build("cpu")))
    _, native = next(sidecar_pods(build("sidecar")))
    for container in (cpu, native):
        container.pop("lifecycle", None)
        container.pop("restartPolicy", None)
        port_name = container["ports"][0]["name"]
        container["ports"][0]["name"] = "PORT"
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[kind]["httpGet"]["port"] == port_name
            container[kind]["httpGet"]["port"] = "PORT"
        container["env"] = sorted(container["env"], key=lambda e: e["name"])
    assert native == cpu


def test_autoscaled_overlays_leave_the_replica_count_to_the_autoscaler() -> None:
    assert _deployment("standalone")["spec"]["replicas"] >= 2
    for overlay in ("autoscaling", "autoscaling-keda"):
        assert "replicas" not in _deployment(overlay)["spec"], overlay
        # Otherwise identical to the standalone overlay's Deployment.
        expected = copy.deepcopy(_deployment("standalone"))
        del expected["spec"]["replicas"]
        assert _deployment(overlay) == expected, overlay
