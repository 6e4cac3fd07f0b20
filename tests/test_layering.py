"""The layers of DESIGN.md, checked by walking every module's imports.

The graph manager knows nothing of HTTP; the HTTP layer knows nothing of CUDA internals; the
models know nothing of the app. `app/cudagraph/`, `models/` and the engine must also import on a
GPU box that has torch but no fastapi/pydantic, which this test guards too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Top-level packages each layer may import, besides the standard library and itself.
ALLOWED: dict[str, set[str]] = {
    "app/cudagraph": {"torch", "app.cudagraph"},
    "models": {"torch", "safetensors", "tokenizers", "huggingface_hub", "models"},
    # numpy: the rows of a batch (it comes with torch)
    "app/engine": {"torch", "numpy", "app.cudagraph", "models", "app.engine"},
    # The processes around the engine: the engine, its metrics and the app they serve.
    "app/serving": {
        "zmq",
        "msgspec",
        "numpy",
        "prometheus_client",
        "uvicorn",
        "uvloop",
        "models",
        "app.engine",
        "app.metrics",
        "app.settings",
        "app.main",
        "app.serving",
    },
    # device/dtype rules, shared by the app and the service benchmark on bare GPU boxes
    "app/devices.py": {"torch", "models"},
}
WEB_PACKAGES = {"fastapi", "starlette", "pydantic", "pydantic_settings", "uvicorn"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _is_allowed(name: str, allowed: set[str]) -> bool:
    import sys

    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__":
        return True
    return any(name == a or name.startswith(a + ".") or top == a for a in allowed)


def _layer_files(layer: str) -> list[Path]:
    path = ROOT / layer
    return [path] if path.is_file() else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_one_way(layer: str) -> None:
    files = _layer_files(layer)
    assert files, f"no Python files under {layer}"
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports(path)
        if not _is_allowed(name, ALLOWED[layer])
    ]
    assert not bad, "layering broken:\n" + "\n".join(bad)


def test_app_package_init_imports_nothing_heavy() -> None:
    # `import app.cudagraph` runs app/__init__.py first: it must not pull in the web stack.
    names = _imports(ROOT / "app" / "__init__.py")
    assert not [n for n in names if n.split(".")[0] in WEB_PACKAGES | {"app"}], names


def test_http_layer_never_touches_cuda_directly() -> None:
    # Routes and metrics read the graph cache's view; they never call torch.cuda themselves.
    files = sorted((ROOT / "app" / "api").rglob("*.py")) + [ROOT / "app" / "metrics.py"]
    offenders = [
        str(p.relative_to(ROOT)) for p in files if p.exists() and "torch.cuda" in p.read_text()
    ]
    assert not offenders, offenders


def _imports_top(path: Path, top: str) -> list[str]:
    """The imports in `path` of package `top` (absolute ones: relative imports stay inside the
    file's own package)."""
    return [n for n in _imports(path) if n == top or n.startswith(top + ".")]


@pytest.mark.parametrize("package", ["bench", "tests"])
def test_product_code_never_imports_benchmarks_or_tests(package: str) -> None:
    # bench/ and tests/ are not in the wheel: a product import of either breaks the installed
    # service.
    files = sorted((ROOT / "app").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py"))
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports_top(path, package)
    ]
    assert not bad, "\n".join(bad)


def test_benchmarks_are_outside_the_package() -> None:
    assert (ROOT / "bench" / "__main__.py").is_file()  # `python -m bench`
    assert not list((ROOT / "app" / "bench").rglob("*.py")), "the benchmarks live in bench/"


def test_product_tests_never_import_benchmarks() -> None:
    # Only the benchmarks' own tests (tests/bench/) may import bench/; the server-process
    # helpers the end-to-end tests share with it live in tests/server_process.py.
    bench_tests = ROOT / "tests" / "bench"
    files = [p for p in sorted((ROOT / "tests").rglob("*.py")) if bench_tests not in p.parents]
    assert ROOT / "tests" / "test_layering.py" in files
    bad = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in _imports_top(path, "bench")
    ]
    assert not bad, "\n".join(bad)


def test_variable_names_live_in_the_settings_layer() -> None:
    # One place knows the SIDECAR_* names; the rest names settings fields or asks env_name().
    files = sorted((ROOT / "app").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py"))
    offenders = [
        str(p.relative_to(ROOT))
        for p in files
        if p.name != "settings.py" and "SIDECAR_" in p.read_text(encoding="utf-8")
    ]
    assert not offenders, offenders
