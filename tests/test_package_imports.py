"""What importing the packages costs: `app.cudagraph` and `models` resolve their public names on
first use, so the HTTP front ends (settings, routes, tokenizer, engine client) never import torch;
the name tables and the type checker's imports agree."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server_process import ROOT

PACKAGES = ["app.cudagraph", "models"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_is_the_object_of_its_module(package: str) -> None:
    pkg = importlib.import_module(package)
    assert pkg.__all__
    for name in pkg.__all__:
        module = importlib.import_module(f"{package}.{pkg._MODULE_OF[name]}")
        assert getattr(pkg, name) is getattr(module, name)
    with pytest.raises(AttributeError, match="no_such_name"):
        pkg.no_such_name  # noqa: B018 - the lookup is the test


@pytest.mark.parametrize("package", PACKAGES)
def test_the_type_checker_sees_the_same_names(package: str) -> None:
    pkg = importlib.import_module(package)
    assert pkg.__file__ is not None
    tree = ast.parse(Path(pkg.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
    )
    seen = {
        f"{node.module}:{alias.name}"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == {f"{package}.{module}:{name}" for name, module in pkg._MODULE_OF.items()}


def test_a_front_end_app_imports_no_torch() -> None:
    # A fresh interpreter: this one has torch loaded by other tests.
    code = (
        "import sys\n"
        "from app.__main__ import main\n"
        "from app.main import create_app\n"
        "from app.serving.front_end import run_front_end\n"
        "from app.settings import load_settings\n"
        "app = create_app(load_settings(model='toy'), engine_address='ipc:///nowhere')\n"
        "assert app.state.engine.alive\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # and the in-process app does load it (the check above can fail)
    code = code.replace(", engine_address='ipc:///nowhere'", "")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "'torch'" in out.stdout
