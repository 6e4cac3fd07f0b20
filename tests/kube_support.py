"""Helpers for the Kubernetes checks: build the Kustomize overlays, validate what they build,
and read the parts of the manifests the tests compare with the code.

No cluster runs where the suite runs, so the manifests are checked offline: `kubectl kustomize`
builds them, `kubernetes-validate` checks built-in kinds against the Kubernetes OpenAPI schemas
it bundles (strict: unknown fields are errors), and the custom resources (KEDA, Prometheus
Operator) are checked against the subset of their published CRD schemas these files use.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from deploy_support import DOCKERFILE, REPO, required_tool

KUBE_DIR = REPO / "deploy" / "kubernetes"
OVERLAYS_DIR = KUBE_DIR / "overlays"
COMPONENTS_DIR = KUBE_DIR / "components"
ADAPTER_VALUES = COMPONENTS_DIR / "hpa" / "prometheus-adapter-values.yaml"
OVERLAYS = ("standalone", "cpu", "sidecar", "autoscaling", "autoscaling-keda")
SIDECAR_IMAGE_NAME = "cudagraph-sidecar"

# Native sidecars (an init container with restartPolicy: Always) are on by default from 1.29;
# the newest schemas the validator bundles are checked as well, and the kubectl release here.
MIN_KUBERNETES = "1.29"


# --- kubectl kustomize ---------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl client (Kustomize is built in): a failure under CI, where .ci/run installs
    it, a skip that says how to get it on a developer machine."""
    why = (
        "needed for `kubectl kustomize`; .ci/run installs it, "
        "see docs/kubernetes.md#how-the-manifests-are-checked"
    )
    return required_tool("kubectl", why)


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR` as a list of documents; a build error fails the test."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        where = directory.relative_to(REPO) if directory.is_relative_to(REPO) else directory
        pytest.fail(
            f"`kubectl kustomize {where}` exited {proc.returncode}:\n{proc.stderr.strip()}",
            pytrace=False,
        )
    docs = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    assert docs, f"{directory} builds no resources"
    return docs


@functools.cache
def _built(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(OVERLAYS_DIR / overlay))


def build(overlay: str) -> list[dict[str, Any]]:
    """The overlay's resources (built once per session; each caller gets its own copy)."""
    return copy.deepcopy(list(_built(overlay)))


def compose_kustomization(tmp: Path, text: str) -> Path:
    """A kustomization.yaml in `tmp`, with `{kube}` in `text` replaced by deploy/kubernetes as a
    relative path (Kustomize refuses absolute ones)."""
    tmp.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(KUBE_DIR, tmp)
    (tmp / "kustomization.yaml").write_text(text.replace("{kube}", rel), encoding="utf-8")
    return tmp


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# --- pods and containers -------------------------------------------------------------------------


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def is_sidecar_image(image: str) -> bool:
    """The sidecar's image, whatever registry an overlay's `images:` puts in front."""
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return name == SIDECAR_IMAGE_NAME


def sidecar_pods(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, sidecar container) for every workload that runs the sidecar's image."""
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
            continue
        spec = pod_spec(doc)
        for container in all_containers(spec):
            if is_sidecar_image(container["image"]):
                yield spec, container


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """Literal environment values (`value:`); entries with `valueFrom` are left out."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def env_entry(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for entry in container.get("env", []):
        if entry["name"] == name:
            return dict(entry)
    return None


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a named container port) as a number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def probe_budget_s(probe: dict[str, Any]) -> float:
    """The longest a probe may keep failing before it gives up (Kubernetes' defaults)."""
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get(
        "failureThreshold", 3
    )


def prestop_seconds(container: dict[str, Any]) -> float:
    """How long the container's preStop hook takes: `sleep N` (exec) or the sleep action."""
    pre = container.get("lifecycle", {}).get("preStop")
    if pre is None:
        return 0.0
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) == 2 and Path(command[0]).name == "sleep":
        return float(command[1])
    raise AssertionError(f"preStop hook of unknown duration: {pre}")


def volume_for_path(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The pod volume mounted (writable) over `path` in the container; fails when none is."""
    best: dict[str, Any] | None = None
    for mount in container.get("volumeMounts", []):
        mount_path = mount["mountPath"].rstrip("/")
        if path == mount_path or path.startswith(mount_path + "/"):
            if best is None or len(mount_path) > len(best["mountPath"].rstrip("/")):
                best = mount
    assert best is not None, f"{path} is on the read-only root filesystem (no volume mounted)"
    assert not best.get("readOnly", False), f"{path} is on a read-only mount {best}"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    assert best["name"] in volumes, f"mount {best['name']} has no volume in the pod"
    return dict(volumes[best["name"]])


def labels_match(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector's matchLabels (the only form these manifests use) against labels."""
    assert set(selector) <= {"matchLabels"}, f"unsupported selector {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile_facts() -> dict[str, int]:
    """EXPOSE port, USER uid/gid and the HEALTHCHECK start period (s) of the final stage."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    expose = re.findall(r"^EXPOSE\s+(\d+)", text, re.M)
    user = re.findall(r"^USER\s+(\d+):(\d+)", text, re.M)
    start = re.findall(r"--start-period=(\d+)s", text)
    assert expose and user and start, "Dockerfile lacks EXPOSE, a numeric USER or a start period"
    return {
        "port": int(expose[-1]),
        "uid": int(user[-1][0]),
        "gid": int(user[-1][1]),
        "start_period_s": int(start[-1]),
    }


# --- prometheus-adapter rules --------------------------------------------------------------------


def adapter_rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(ADAPTER_VALUES.read_text(encoding="utf-8"))
    rules = values["rules"]["custom"]
    assert isinstance(rules, list) and rules, "no rules.custom in the adapter values"
    return rules


def series_query_metric(rule: dict[str, Any]) -> str:
    """The metric a rule's seriesQuery selects (`name{...}`)."""
    match = re.fullmatch(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{.*\})?\s*", rule["seriesQuery"])
    assert match, f"seriesQuery is not a plain selector: {rule['seriesQuery']}"
    return match.group(1)


def adapter_metric_name(rule: dict[str, Any]) -> str:
    """The name the adapter publishes for a rule: `name.matches` rewritten to `name.as`."""
    series = series_query_metric(rule)
    pattern = rule["name"]["matches"]
    assert re.search(pattern, series), f"{pattern!r} does not match {series}"
    as_ = rule["name"].get("as", "")
    return re.sub(pattern, as_, series) if as_ else series


def render_adapter_query(rule: dict[str, Any], namespace: str, pod: str) -> str:
    """A rule's metricsQuery as the adapter sends it for one pod (its Go template filled in)."""
    query = str(rule["metricsQuery"])
    query = query.replace("<<.Series>>", series_query_metric(rule))
    query = query.replace("<<.LabelMatchers>>", f'namespace="{namespace}",pod="{pod}"')
    query = query.replace("<<.GroupBy>>", "pod")
    leftover = re.findall(r"<<[^>]*>>", query)
    assert not leftover, f"unknown template fields {leftover} in {rule['metricsQuery']}"
    return query


# --- custom resources: the subset of the published CRD schemas these manifests use ---------------

_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
    },
}
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
}


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


# monitoring.coreos.com/v1 PodMonitor: spec.selector is required; endpoint field names as in the
# operator's CRD (the objects these files fill in refuse any other field, so a typo fails).
PODMONITOR_SCHEMA = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    {
        "type": "object",
        "required": ["selector", "podMetricsEndpoints"],
        "additionalProperties": False,
        "properties": {
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": {"type": "integer", "minimum": 0},
            "targetLimit": {"type": "integer", "minimum": 0},
            "attachMetadata": {"type": "object"},
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "port": {"type": "string"},
                        "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "params": {"type": "object"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                        "filterRunning": {"type": "boolean"},
                        "enableHttp2": {"type": "boolean"},
                        "followRedirects": {"type": "boolean"},
                        "tlsConfig": {"type": "object"},
                        "authorization": {"type": "object"},
                    },
                },
            },
        },
    },
)

_HPA_RULES = {"type": "object"}  # checked with the Kubernetes schema (see validate_custom)

# keda.sh/v1alpha1 ScaledObject: scaleTargetRef and triggers are required; trigger metadata is
# a map of strings; the prometheus scaler needs serverAddress, query and threshold.
SCALEDOBJECT_SCHEMA = _resource(
    "keda.sh/v1alpha1",
    "ScaledObject",
    {
        "type": "object",
        "required": ["scaleTargetRef", "triggers"],
        "additionalProperties": False,
        "properties": {
            "scaleTargetRef": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": {"type": "string"},
                    "envSourceContainerName": {"type": "string"},
                },
            },
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"type": "integer", "minimum": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {
                "type": "object",
                "required": ["failureThreshold", "replicas"],
                "properties": {
                    "failureThreshold": {"type": "integer"},
                    "replicas": {"type": "integer"},
                },
            },
            "advanced": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "behavior": _HPA_RULES},
                    },
                    "scalingModifiers": {"type": "object"},
                },
            },
            "triggers": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["type", "metadata"],
                    "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"},
                        "name": {"type": "string"},
                        "metadata": _STRING_MAP,
                        "authenticationRef": {
                            "type": "object",
                            "required": ["name"],
                            "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                        },
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "useCachedMetrics": {"type": "boolean"},
                    },
                    "if": {"properties": {"type": {"const": "prometheus"}}},
                    "then": {
                        "properties": {
                            "metadata": {
                                "required": ["serverAddress", "query", "threshold"],
                                "additionalProperties": False,
                                "properties": {
                                    "serverAddress": {"type": "string", "pattern": "^https?://"},
                                    "query": {"type": "string"},
                                    "threshold": {"type": "string", "pattern": r"^\d+(\.\d+)?$"},
                                    "activationThreshold": {
                                        "type": "string",
                                        "pattern": r"^\d+(\.\d+)?$",
                                    },
                                    "namespace": {"type": "string"},
                                    "customHeaders": {"type": "string"},
                                    "ignoreNullValues": {"type": "string"},
                                    "queryParameters": {"type": "string"},
                                    "unsafeSsl": {"type": "string"},
                                    "authModes": {"type": "string"},
                                },
                            }
                        }
                    },
                },
            },
        },
    },
)

CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA,
    ("keda.sh/v1alpha1", "ScaledObject"): SCALEDOBJECT_SCHEMA,
}


def validate_custom(doc: dict[str, Any], kube_version: str) -> None:
    """A custom resource against its schema subset; raises jsonschema.ValidationError. The HPA
    behaviour a ScaledObject passes on is checked with Kubernetes' own HPA schema."""
    import kubernetes_validate

    schema = CUSTOM_SCHEMAS[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft202012Validator(schema).validate(doc)
    behavior = (
        doc["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    )
    if behavior is not None:
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": doc["metadata"]["name"]},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                "maxReplicas": 1,
                "behavior": behavior,
            },
        }
        kubernetes_validate.validate(hpa, kube_version, strict=True)
