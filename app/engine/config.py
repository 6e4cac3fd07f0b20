"""What the engine and its runner are built from: frozen configs with every value resolved.

Torch-free (its dtype only as a type), so the settings layer and the HTTP front ends, which
never run the model, can build and read them without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.cudagraph.modes import CUDAGraphMode
from app.cudagraph.options import CacheConfig, CUDAGraphOptions

if TYPE_CHECKING:
    import torch

TOY_MODEL = "toy"


class EngineConfigError(ValueError):
    """Settings the engine cannot work with, found once the model is known. ``settings`` names
    the settings fields involved (the settings layer turns them into variable names)."""

    def __init__(self, message: str, *settings: str) -> None:
        super().__init__(message)
        self.settings = settings


@dataclass(frozen=True)
class RunnerConfig:
    """How the runner pads, splits and caches graphs (mode already resolved: no "auto").

    capture_sizes: FULL batch-size ladder (None: `get_cudagraph_sizes` default up to
        max_batch_size). seq_buckets: FULL sequence buckets (None: powers of two from 16), capped
        at the encoder's max_seq_len, which is always the top one. token_buckets: PIECEWISE token
        ladder (None: `buckets.default_token_ladder` up to max_num_tokens).
    max_num_tokens: tokens in one forward (FULL: padded B*S; PIECEWISE: the token bucket).
    cache, options: the graph cache's policy and capture options.
    split_overhead_tokens: fixed cost of a forward in tokens, for FULL length grouping (None:
        by device, see runner.DEFAULT_SPLIT_OVERHEAD_TOKENS).
    """

    mode: CUDAGraphMode
    max_batch_size: int = 32
    max_num_tokens: int = 8192
    capture_sizes: tuple[int, ...] | None = None
    seq_buckets: tuple[int, ...] | None = None
    token_buckets: tuple[int, ...] | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    options: CUDAGraphOptions = field(default_factory=CUDAGraphOptions)
    split_overhead_tokens: int | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs, already resolved (no "auto" left). Built by the settings
    layer (`app.settings.Settings.engine_config`), which holds every default."""

    model: str | None  # a directory or hub id; None: the bundled all-MiniLM-L6-v2; "toy"
    model_revision: str | None  # of a hub id
    task: str | None  # embed, rerank or classify; None: what the model's config says
    device: str
    dtype: torch.dtype
    # What `dtype` float16, chosen by default, gives way to for a model it does not suit (one
    # that overflows it, or stored in bfloat16: `models.loader.serving_dtype`); None: float16
    # was asked for.
    float16_fallback: torch.dtype | None
    max_seq_len: int | None  # None: the model's own
    num_threads: int  # torch intra-op threads; 0 keeps torch's default
    # Graph mode, ladders, the graph cache, and the batch limits the batcher shares with the
    # runner (max_batch_size texts, max_num_tokens padded tokens per forward).
    runner: RunnerConfig
    max_batch_wait_s: float
    max_queue: int
    request_timeout_s: float
    prewarm_shapes: tuple[tuple[int, int], ...]  # (batch, seq_len)
    prewarm_ladder: bool
    profile_path: Path | None
    profile_prewarm_top_k: int
