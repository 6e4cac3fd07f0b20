"""`SentenceEncoder`: a loaded model, its tokenizer and what the service needs to know of them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.bert import BertEncoder
from models.tokenizer import TextTokenizer


@dataclass(frozen=True)
class SentenceEncoder:
    """A ready-to-run sentence encoder (weights on `device`, in `dtype`, in eval mode)."""

    name: str
    model: BertEncoder
    tokenizer: TextTokenizer
    max_seq_len: int
    device: torch.device
    dtype: torch.dtype

    @property
    def dimensions(self) -> int:
        return self.model.config.hidden_size

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Plain eager embeddings (padded layout, no graphs): (n, dimensions) float32 on CPU.

        A reference and a convenience; the service goes through the runner instead.
        """
        ids = self.tokenizer.encode(texts)
        if not ids:
            return torch.empty((0, self.dimensions))
        S = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), S), self.tokenizer.pad_id, dtype=torch.int64)
        mask = torch.zeros((len(ids), S), dtype=torch.bool)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        out = self.model(input_ids.to(self.device), mask.to(self.device))
        return out.float().cpu()


def check_device_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.device:
    """Validate the (device, dtype) pair; returns the torch.device.

    Half precision (float16, bfloat16) is refused on CPU: CPU kernels for them are slow or
    missing on many machines, and nothing here is tuned for them. float32 runs everywhere.
    """
    dev = torch.device(device)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if dev.type == "cpu" and dtype != torch.float32:
        raise ValueError(f"{dtype} is only supported on CUDA; use float32 on CPU")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {dev}")
    return dev
