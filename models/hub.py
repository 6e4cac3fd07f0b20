"""Naming a model by Hugging Face hub id: `resolve_model` turns a directory or a hub id into a
local directory, fetching only the files the loader reads into the standard cache.

The environment is read at call time (huggingface_hub reads some of it once, at import):
HF_HOME / HF_HUB_CACHE for the cache, HF_TOKEN for private and gated repositories, and
HF_HUB_OFFLINE=1 to serve from the cache only (a model not cached is then a clear error).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from models.errors import ModelLoadError

logger = logging.getLogger(__name__)

# What the loader reads, and nothing else: no pickles (*.bin), no ONNX/OpenVINO/TF/Flax
# variants, no READMEs or images. Module folders are named "<idx>_<Name>" by
# sentence-transformers (1_Pooling, 2_Dense, ...); a Transformer may live in one (0_...).
ALLOW_PATTERNS = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "[0-9]*_*/*.json",
    "[0-9]*_*/*.safetensors",
]
# owner/name or a bare canonical name; letters, digits, "-", "_", "." (the hub's rules).
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache the environment names now (HF_HUB_CACHE, else HF_HOME/hub)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and ".." not in name


def resolve_model(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A model directory: `name_or_path` itself when it is one, else the snapshot of that hub id
    (at `revision`: a branch, tag or commit; None: main) in the hub cache, downloaded first
    unless HF_HUB_OFFLINE=1. Raises ModelLoadError naming the path or the id."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if revision is not None:
            logger.warning("%s is a directory: revision %r is ignored", path, revision)
        return path
    name = str(name_or_path)
    if path.exists():
        raise ModelLoadError(path, "not a directory (a model is a directory or a hub id)")
    if isinstance(name_or_path, Path) or not is_hub_id(name):
        raise ModelLoadError(path, "model directory not found")
    return _snapshot(name, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline, cache = hub_offline(), hub_cache_dir()
    label = repo_id if revision is None else f"{repo_id}@{revision}"
    where = "the cache only (HF_HUB_OFFLINE=1)" if offline else "the hub"
    logger.info("model %s: resolving from %s into %s", label, where, cache)
    t0 = time.perf_counter()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=ALLOW_PATTERNS,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE=1" if offline else "the hub could not be reached"
        raise ModelLoadError(
            repo_id,
            f"no such directory, and {label} is not in the Hugging Face cache {cache} ({why})",
        ) from e
    except GatedRepoError as e:
        raise ModelLoadError(repo_id, f"{label} is gated: accept its terms and set HF_TOKEN") from e
    except RevisionNotFoundError as e:
        raise ModelLoadError(repo_id, f"revision {revision!r} not found on the hub") from e
    except RepositoryNotFoundError as e:
        raise ModelLoadError(
            repo_id,
            "neither a directory nor a model on the Hugging Face hub (a private one needs "
            "HF_TOKEN)",
        ) from e
    except HFValidationError as e:
        raise ModelLoadError(repo_id, f"neither a directory nor a valid hub id: {e}") from e
    except Exception as e:  # HTTP errors, a full disk, ...
        raise ModelLoadError(repo_id, f"cannot fetch {label} from the hub: {e}") from e
    snapshot = Path(folder)
    files = [p for p in snapshot.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    logger.info(
        "model %s: %d files, %.1f MB in %s (%.1f s)",
        label,
        len(files),
        size / 1e6,
        snapshot,
        time.perf_counter() - t0,
    )
    return snapshot
