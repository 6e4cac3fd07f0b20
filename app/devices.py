"""Which device, dtype and graph mode `auto` (and the other setting values) mean on this machine.

No web stack: the service benchmark resolves its servers' settings with these same rules, and it
runs on GPU boxes that lack fastapi and pydantic. Torch is imported only by the functions that
ask it (the HTTP front ends read the settings and never import torch). A bad value raises
ValueError; the settings layer names the variable.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def device_name(text: str) -> str:
    """A device setting normalised (auto, cpu, cuda or cuda:N); ValueError for anything else.
    Only the spelling: whether the device exists is `resolve_device`'s question."""
    name = text.strip().lower()
    prefix, sep, index = name.partition(":")
    if name in ("auto", "cpu", "cuda") or (prefix == "cuda" and sep and index.isdigit()):
        return name
    raise ValueError("must be auto, cpu, cuda or cuda:N")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{name!r} requested but CUDA is not available (use auto or cpu)")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return name


def float16_fallback(device: str) -> torch.dtype:
    """What `auto` serves a model in where float16 overflows (Gemma's activations do): bfloat16 on
    a GPU that multiplies it natively (Ampere and later), else float32."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.bfloat16
    return torch.float32


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """auto: the half precision the hardware multiplies natively, else float32. float16 on
    CUDA; bfloat16 on a CPU with AVX512-BF16 or AMX; float32 on others."""
    import torch

    from models.encoder import cpu_has_native_bf16

    if name == "auto":
        if device.startswith("cuda"):
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if device == "cpu" and name == "float16":
        raise ValueError(
            "float16 is only supported on CUDA; use float32, bfloat16 or auto on the CPU"
        )
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def resolve_graph_mode(name: str, device: str) -> str:
    """auto: FULL on CUDA; NONE on a CPU, where graphs are mocks that save nothing and FULL's
    padding costs real compute. Any other name (NONE, PIECEWISE, FULL) is kept."""
    name = name.upper()
    if name == "AUTO":
        return "FULL" if device.startswith("cuda") else "NONE"
    return name


# Front ends on a GPU host: enough to keep the engine fed, each with a core to itself, leaving
# cores to the engine and the application next door.
MAX_AUTO_WORKERS = 8


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's
    limit; os.cpu_count() reports the whole host)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def resolve_workers(setting: int | None, device: str, cpu_count: int | None) -> int:
    """HTTP front-end processes: the setting, or for auto (None) one on a CPU host (its cores
    run the model) and on CUDA half the cores, 2 to MAX_AUTO_WORKERS."""
    if setting is not None:
        return setting
    if not device.startswith("cuda"):
        return 1
    return max(2, min(MAX_AUTO_WORKERS, (cpu_count or 2) // 2))
