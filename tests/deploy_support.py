"""Helpers for the deployment checks: repo paths, external tools, compose files, dashboard PromQL.

No Docker engine runs where the suite runs, so the deployment files are checked the way CI can:
by schema, by linters, by the real Prometheus tools, and against the real service's /metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
COMPOSE_CPU_FILE = REPO / "docker-compose.cpu.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS_CONFIG = REPO / "config" / "prometheus.yml"
GRAFANA_DIR = REPO / "config" / "grafana"
GRAFANA_DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources"
GRAFANA_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards"
GRAFANA_DASHBOARDS = GRAFANA_DIR / "dashboards"
DASHBOARD = GRAFANA_DASHBOARDS / "cudagraph-sidecar.json"

# The tools that come from Debian's prometheus package, not from pip. .ci/run installs the
# package and sets this variable, so there a missing tool fails instead of skipping.
PROMETHEUS_TOOLS_REQUIRED_ENV = "CI_REQUIRE_PROMETHEUS"


def run_tool(args: list[str], *, stdin: str | None = None, timeout: float = 120) -> str:
    """Run a checker; fail the test with its full output unless it exits 0."""
    proc = subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        pytest.fail(f"`{' '.join(args)}` exited {proc.returncode}:\n{output}", pytrace=False)
    return output


def venv_tool(name: str) -> str:
    """A tool installed by the dev extra (next to this interpreter, else on PATH); missing fails."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} not found next to {sys.executable} nor on PATH; it comes with the dev extra "
            "(`make test` installs it: pip install -e '.[dev]')",
            pytrace=False,
        )
    return found


def required_tool(name: str, why: str, ci_flag: str | None = None) -> str:
    """The path of command `name`. Missing: a failure under CI (or where `ci_flag` is "1"), where
    .ci/run installs it, else a skip saying `why` (what needs it and how to get it)."""
    found = shutil.which(name)
    if found is not None:
        return found
    message = f"{name} is not installed ({why})"
    if os.environ.get("CI") or (ci_flag is not None and os.environ.get(ci_flag) == "1"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def prometheus_tool(name: str) -> str:
    """`prometheus` or `promtool` from Debian's prometheus package.

    Missing: a failure under CI (`.ci/run` installs the package, then sets
    CI_REQUIRE_PROMETHEUS=1), a skip that says how to install it on a developer machine.
    """
    why = "Debian/Ubuntu: apt-get install --no-install-recommends prometheus; .ci/run installs it"
    return required_tool(name, why, PROMETHEUS_TOOLS_REQUIRED_ENV)


# --- compose files -----------------------------------------------------------------------------


class _Reset:
    """Compose's `!reset` tag: the key is removed from the merged result."""

    def __repr__(self) -> str:
        return "!reset"


RESET = _Reset()


class _Override:
    """Compose's `!override` tag: the value replaces the base value instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that understands the two merge tags of the compose specification."""


def _construct_any(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    assert isinstance(node, yaml.ScalarNode)
    return loader.construct_scalar(node)


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
ComposeLoader.add_constructor(
    "!override", lambda loader, node: _Override(_construct_any(loader, node))
)


def load_compose(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.load(fh, Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def merge_compose(base: Any, override: Any) -> Any:
    """`docker compose -f base -f override` merge rules, for the shapes these files use.

    Mappings merge key by key, `!reset` removes a key, `!override` replaces a value, sequences
    are appended (without repeating equal items) and scalars are replaced.
    """
    if isinstance(override, _Override):
        return strip_merge_tags(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is RESET:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_compose(merged[key], value)
            else:
                merged[key] = strip_merge_tags(value)
        return merged
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return strip_merge_tags(override)


def strip_merge_tags(data: Any) -> Any:
    """A file on its own: `!reset` keys dropped, `!override` values unwrapped."""
    if isinstance(data, _Override):
        return strip_merge_tags(data.value)
    if isinstance(data, dict):
        return {k: strip_merge_tags(v) for k, v in data.items() if v is not RESET}
    if isinstance(data, list):
        return [strip_merge_tags(v) for v in data if v is not RESET]
    return data


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose variable interpolation for `${VAR}` and `${VAR:-default}`."""
    return _INTERPOLATION.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), value)


def parse_duration(text: str) -> float:
    """A compose/Prometheus duration (`1m30s`, `45s`, `500ms`) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


# --- Grafana dashboard and PromQL --------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every query target of every panel."""
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            queries.append((str(panel.get("title")), str(target["expr"])))
    return queries


# Grafana's built-in variables and this dashboard's own, with the values a real evaluation uses.
GRAFANA_VARIABLES = {
    "$__rate_interval": "15s",
    "$__interval": "5s",
    "$__range": "5m",
    "$instance": ".*",
}


def substitute_grafana_variables(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    leftover = re.findall(r"\$\w+", expr)
    assert not leftover, f"unknown Grafana variables {leftover} in {expr!r}"
    return expr


_PROMQL_KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Label matchers (`{...}`), range/subquery brackets (`[...]`), string literals, grouping
    lists (`by (...)` and friends), function names (an identifier followed by `(`), keywords
    and numbers are not metric names; `{__name__="x"}` selectors are.
    """
    names = set(re.findall(r"__name__\s*=\s*\"([^\"]+)\"", expr))
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text, flags=re.I
    )
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if is_call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


# --- Prometheus text exposition ----------------------------------------------------------------


def exported_series_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can store, as Prometheus stores them.

    From the samples present, plus what each `# TYPE` line declares: a labelled counter with no
    child yet still declares its `x_total`; a histogram `x` stores only `x_bucket`, `x_sum` and
    `x_count` (never a bare `x`), a summary `x` (quantiles), `x_sum` and `x_count`.
    """
    names: set[str] = set()
    for line in exposition.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            if kind == "histogram":
                names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
            elif kind == "summary":
                names.update({name, f"{name}_sum", f"{name}_count"})
            else:
                names.add(name)
            continue
        if line.startswith("#"):
            continue
        names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names
