"""Markdown tables and the results folder every benchmark writes into.

Each subcommand (engine, service, adaptive, overhead) writes one *section*: a Markdown fragment
and a JSON-serialisable dict. Sections of earlier runs into the same folder are kept, so
`scripts/gpu_check.sh` can run the benchmarks one by one and still get one `results.md` and one
`results.json`. Imports torch and the standard library only (the GPU box has no fastapi).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Order of sections in results.md; unknown names go last, alphabetically.
SECTION_ORDER = ("machine", "engine", "service", "adaptive", "overhead")

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def fmt(value: object, digits: int = 2) -> str:
    """One table cell: floats with a fixed number of decimals, None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    digits: int = 2,
    align: Sequence[str] | None = None,
) -> str:
    """A GitHub-flavoured Markdown table. `align` holds "l" or "r" per column (default: text
    columns left, everything else right)."""
    if not headers:
        raise ValueError("markdown_table needs at least one column")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells, expected {len(headers)}")
    if align is None:
        align = ["l" if rows and isinstance(rows[0][c], str) else "r" for c in range(len(headers))]
    elif len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries, expected {len(headers)}")

    def cell(v: object) -> str:
        # A pipe inside a cell would split the column.
        return fmt(v, digits).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "|" + "|".join("---:" if a == "r" else ":---" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: they only mean something next to this."""
    import torch

    info: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_markdown(info: dict[str, Any]) -> str:
    gpu = info.get("gpu") or "none (CUDA not available: graphs are mock graphs)"
    return (
        f"- date (UTC): {info['date_utc']}\n"
        f"- CPU: {info['cpu']}, {info['cpu_count']} logical cores\n"
        f"- GPU: {gpu}\n"
        f"- torch {info['torch']} ({info['torch_threads']} intra-op threads in the bench process,"
        f" OMP_WAIT_POLICY={info.get('omp_wait_policy', 'unset')}), Python {info['python']}, "
        f"{info['platform']}\n"
    )


class ResultsDir:
    """A folder of results: `sections/<name>.md`, `results.json`, `results.md`, plots."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "sections").mkdir(exist_ok=True)

    @property
    def json_path(self) -> Path:
        return self.path / "results.json"

    @property
    def markdown_path(self) -> Path:
        return self.path / "results.md"

    def load_json(self) -> dict[str, Any]:
        if not self.json_path.exists():
            return {}
        data = json.loads(self.json_path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{self.json_path} does not hold a JSON object")
        return data

    def write_section(self, name: str, markdown: str, data: dict[str, Any]) -> None:
        """Store one section and rebuild results.md / results.json from all sections."""
        if not _NAME_RE.match(name):
            raise ValueError(f"bad section name {name!r}")
        (self.path / "sections" / f"{name}.md").write_text(markdown.rstrip() + "\n")
        all_data = self.load_json()
        all_data[name] = data
        all_data["machine"] = machine_info()
        # allow_nan=False: a NaN in results.json would not be valid JSON for other tools.
        self.json_path.write_text(
            json.dumps(_json_safe(all_data), indent=2, allow_nan=False) + "\n"
        )
        self._rebuild_markdown(all_data["machine"])

    def _rebuild_markdown(self, info: dict[str, Any]) -> None:
        fragments = {p.stem: p.read_text() for p in (self.path / "sections").glob("*.md")}
        order = [n for n in SECTION_ORDER if n in fragments]
        order += sorted(n for n in fragments if n not in SECTION_ORDER)
        parts = ["# Benchmark results\n", "## Machine\n", machine_markdown(info)]
        parts += [fragments[n] for n in order]
        self.markdown_path.write_text("\n".join(parts))


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
