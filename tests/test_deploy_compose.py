"""docker-compose.yml and the CPU override: compose-spec schema, GPU reservation, health,
draining, pinned images, and that every mounted file and setting really exists.

`docker compose config` needs the compose plugin, which these machines lack, so the files are
validated against the compose specification's JSON schema (vendored by check-jsonschema) and
the override is merged here with the compose merge rules it relies on.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    COMPOSE_CPU_FILE,
    COMPOSE_FILE,
    DASHBOARD,
    GRAFANA_DATASOURCES,
    GRAFANA_PROVIDERS,
    PROMETHEUS_CONFIG,
    REPO,
    RESET,
    interpolate,
    load_compose,
    merge_compose,
    parse_duration,
    run_tool,
    strip_merge_tags,
    venv_tool,
)

SERVICE_PORT = 8000


def validate_compose(document: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    checker = venv_tool("check-jsonschema")
    run_tool([checker, "--builtin-schema", "vendor.compose-spec", str(path)])


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return load_compose(COMPOSE_CPU_FILE)


@pytest.fixture(scope="module")
def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = merge_compose(base, override)
    assert isinstance(result, dict)
    return result


def _devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


# --- schema --------------------------------------------------------------------------------------


def test_base_file_is_valid_compose() -> None:
    # The file exactly as written (no !reset tags in it, so the checker reads it directly).
    checker = venv_tool("check-jsonschema")
    run_tool([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)])


def test_merged_cpu_stack_is_valid_compose(merged: dict[str, Any], tmp_path: Path) -> None:
    validate_compose(merged, tmp_path / "merged.json")


def test_cpu_override_alone_is_valid_compose(override: dict[str, Any], tmp_path: Path) -> None:
    # What remains of the override once its merge tags are applied is a compose file too.
    validate_compose(strip_merge_tags(override), tmp_path / "override.json")


def test_schema_check_rejects_a_broken_file(base: dict[str, Any], tmp_path: Path) -> None:
    # The checker and schema really look at the content: a misspelt key is refused.
    broken = json.loads(json.dumps(base))
    broken["services"]["sidecar"]["stop_grace_periodd"] = "45s"
    with pytest.raises(pytest.fail.Exception, match="stop_grace_periodd"):
        validate_compose(broken, tmp_path / "broken.json")


def test_merge_rules() -> None:
    base = {"a": {"env": {"X": "1", "Y": "2"}, "list": [1, 2], "drop": [{"gpu": True}]}}
    over = {"a": {"env": {"Y": "3"}, "list": [2, 3], "drop": RESET}}
    assert merge_compose(base, over) == {"a": {"env": {"X": "1", "Y": "3"}, "list": [1, 2, 3]}}


# --- the GPU stack -------------------------------------------------------------------------------


def test_three_services(base: dict[str, Any]) -> None:
    assert set(base["services"]) == {"sidecar", "prometheus", "grafana"}


def test_sidecar_reserves_an_nvidia_gpu(base: dict[str, Any]) -> None:
    sidecar = base["services"]["sidecar"]
    devices = _devices(sidecar)
    assert len(devices) == 1, devices
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert device.get("count") in (1, "all") or device.get("device_ids"), device
    assert sidecar["environment"]["SIDECAR_DEVICE"] == "cuda"


def test_sidecar_built_from_this_dockerfile(base: dict[str, Any]) -> None:
    build = base["services"]["sidecar"]["build"]
    assert (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    assert ":" in base["services"]["sidecar"]["image"]


def test_sidecar_health_draining_and_restart(base: dict[str, Any]) -> None:
    sidecar = base["services"]["sidecar"]
    probe = " ".join(sidecar["healthcheck"]["test"])
    assert f"127.0.0.1:{SERVICE_PORT}/readyz" in probe and "curl" not in probe
    assert parse_duration(sidecar["healthcheck"]["start_period"]) >= 60
    assert sidecar["restart"] in {"unless-stopped", "always", "on-failure"}
    assert sidecar.get("init") is True, "tini as PID 1 forwards SIGTERM for the drain"


def test_stop_grace_period_outlasts_the_drain(base: dict[str, Any]) -> None:
    # docker stop kills after stop_grace_period; the service drains for graceful_timeout_s
    # (plus drain_delay_s) after SIGTERM, then saves the hot-shape profile: leave a margin.
    from app.settings import Settings

    sidecar = base["services"]["sidecar"]
    env = sidecar["environment"]
    defaults = Settings.model_fields
    drain = float(env.get("SIDECAR_GRACEFUL_TIMEOUT_S", defaults["graceful_timeout_s"].default))
    delay = float(env.get("SIDECAR_DRAIN_DELAY_S", defaults["drain_delay_s"].default))
    grace = parse_duration(sidecar["stop_grace_period"])
    assert grace >= 30
    assert grace >= drain + delay + 5, (grace, drain, delay)


def test_sidecar_environment_names_real_settings(
    base: dict[str, Any], override: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A misspelt SIDECAR_* variable would only be warned about at start: catch it here, and
    # check the values are accepted by the real settings model.
    from app.settings import Settings, env_name, load_settings

    known = {env_name(name) for name in Settings.model_fields}
    for document in (base, override):
        env = document["services"]["sidecar"].get("environment", {})
        unknown = sorted(set(env) - known)
        assert not unknown, f"not settings of app.settings.Settings: {unknown}"

    merged_env = merge_compose(base, override)["services"]["sidecar"]["environment"]
    for env in (base["services"]["sidecar"]["environment"], merged_env):
        values = {k: interpolate(str(v), {}) for k, v in env.items()}
        for key in [k for k in os.environ if k.upper().startswith("SIDECAR_")]:
            monkeypatch.delenv(key)
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        settings = load_settings()
        assert settings.device == values["SIDECAR_DEVICE"]
        assert str(settings.profile_path) == values["SIDECAR_PROFILE_PATH"]
        assert settings.admin_token is None  # `${SIDECAR_ADMIN_TOKEN:-}` unset: admin disabled


def test_profile_file_lives_on_a_named_volume(base: dict[str, Any]) -> None:
    sidecar = base["services"]["sidecar"]
    profile = Path(sidecar["environment"]["SIDECAR_PROFILE_PATH"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in sidecar["volumes"]}
    owners = [target for target in mounts if profile.is_relative_to(target)]
    assert owners, f"{profile} is not on any mounted volume: {sidecar['volumes']}"
    assert mounts[owners[0]] in base["volumes"], "expected a named volume (survives recreation)"


def test_sidecar_port_matches_the_image(base: dict[str, Any]) -> None:
    ports = base["services"]["sidecar"]["ports"]
    assert any(str(p).endswith(f":{SERVICE_PORT}") for p in ports), ports


def test_images_are_pinned(base: dict[str, Any]) -> None:
    for name, service in base["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image}"
        if name != "sidecar":
            assert service["restart"] in {"unless-stopped", "always", "on-failure"}


# --- Prometheus and Grafana wiring ---------------------------------------------------------------


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """container path -> repository path, for the `./relative:/target[:ro]` volumes."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            mounts[target] = (REPO / source).resolve()
    return mounts


def test_prometheus_loads_the_repo_config(base: dict[str, Any]) -> None:
    prometheus = base["services"]["prometheus"]
    flags = dict(arg.split("=", 1) for arg in prometheus["command"])
    mounts = _bind_mounts(prometheus)
    assert mounts[flags["--config.file"]] == PROMETHEUS_CONFIG.resolve()
    assert flags["--storage.tsdb.path"] in {v.split(":")[1] for v in prometheus["volumes"]}


def test_prometheus_scrapes_the_sidecar_service(base: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"sidecar:{SERVICE_PORT}" in targets, targets
    assert "sidecar" in base["services"]


def test_grafana_mounts_provisioning_and_dashboards(base: dict[str, Any]) -> None:
    grafana = base["services"]["grafana"]
    mounts = _bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == GRAFANA_DATASOURCES.parent.resolve()

    providers = [yaml.safe_load(p.read_text()) for p in sorted(GRAFANA_PROVIDERS.glob("*.yml"))]
    paths = [prov["options"]["path"] for doc in providers for prov in doc["providers"]]
    assert len(paths) == 1
    assert mounts[paths[0]] == DASHBOARD.parent.resolve()

    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(paths[0] + "/")
    assert (mounts[paths[0]] / home[len(paths[0]) + 1 :]).resolve() == DASHBOARD.resolve()


def test_grafana_datasource_points_at_the_prometheus_service(base: dict[str, Any]) -> None:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(GRAFANA_DATASOURCES.glob("*.yml"))]
    sources = [ds for doc in docs for ds in doc["datasources"]]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    listen = dict(arg.split("=", 1) for arg in base["services"]["prometheus"]["command"])
    port = listen["--web.listen-address"].rpartition(":")[2]
    assert sources[0]["url"] == f"http://prometheus:{port}"


# --- the CPU override ----------------------------------------------------------------------------


def test_cpu_override_drops_the_gpu_and_nothing_else(
    base: dict[str, Any], merged: dict[str, Any]
) -> None:
    cpu = merged["services"]["sidecar"]
    assert _devices(cpu) == []
    assert cpu["environment"]["SIDECAR_DEVICE"] == "cpu"

    # Same stack otherwise: other services, volumes, health, draining, ports untouched.
    gpu = base["services"]["sidecar"]
    for key in set(gpu) | set(cpu):
        if key in {"environment", "deploy"}:
            continue
        assert cpu.get(key) == gpu.get(key), key
    assert {k: v for k, v in cpu["environment"].items() if k != "SIDECAR_DEVICE"} == {
        k: v for k, v in gpu["environment"].items() if k != "SIDECAR_DEVICE"
    }
    for name in ("prometheus", "grafana"):
        assert merged["services"][name] == base["services"][name]
    assert merged["volumes"] == base["volumes"]


def test_cpu_override_uses_reset_not_an_empty_list(override: dict[str, Any]) -> None:
    # An empty list would be appended to the base reservation and keep the GPU requirement.
    devices = override["services"]["sidecar"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices is RESET
