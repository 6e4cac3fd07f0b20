"""Suite-wide hooks. Fixtures that one area needs live in that area's test files."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests marked `gpu` exercise real torch.cuda.CUDAGraph capture; without CUDA they skip
    # cleanly (with the reason shown by -ra) instead of failing or being silently deselected.
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
