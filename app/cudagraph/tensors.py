"""Small helpers over nested tensor structures (args, kwargs, outputs).

Supported containers: tuple, list, dict (values). Anything else is a leaf; only tensors count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


def iter_tensors(obj: object) -> Iterator[torch.Tensor]:
    """Tensors of a nested structure, depth first, in a stable order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from iter_tensors(item)
    elif isinstance(obj, Mapping):
        for item in obj.values():
            yield from iter_tensors(item)


def input_addresses(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    """Data pointers of every tensor input: a graph reads its inputs from exactly these."""
    return tuple(t.data_ptr() for t in iter_tensors((args, kwargs)))


def find_device(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> torch.device | None:
    """Device of the first tensor input (None when there is no tensor input)."""
    for tensor in iter_tensors((args, kwargs)):
        return tensor.device
    return None


def storage_bytes(obj: object) -> int:
    """Bytes of the distinct storages behind the tensors of ``obj`` (views counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in iter_tensors(obj):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor aliasing ``tensor``'s memory without owning it (vLLM's ``weak_ref_tensor``).

    Valid only while something else (the graph's memory pool, or the mock graph) keeps the memory
    alive; torch's own CUDA-graph trees rebuild outputs the same way.
    """
    storage = tensor.untyped_storage()
    weak_storage = torch._C._construct_storage_from_data_pointer(
        storage.data_ptr(), tensor.device, storage.nbytes()
    )
    alias = torch.empty((0,), dtype=tensor.dtype, device=tensor.device)
    alias.set_(weak_storage, tensor.storage_offset(), tensor.size(), tensor.stride())
    return alias


def weak_ref_tree(obj: Any) -> Any:
    """``obj`` with every tensor replaced by a non-owning alias (containers rebuilt)."""
    if isinstance(obj, torch.Tensor):
        return weak_ref_tensor(obj)
    if isinstance(obj, tuple):
        items = [weak_ref_tree(item) for item in obj]
        # Named tuples are rebuilt with their own type.
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [weak_ref_tree(item) for item in obj]
    if isinstance(obj, dict):
        return {key: weak_ref_tree(value) for key, value in obj.items()}
    return obj
