"""`SentenceEncoder`: a loaded model, its tokenizer and what the service needs to know of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from models.model import SentenceModel
from models.tokenizer import TextTokenizer


@dataclass(frozen=True)
class SentenceEncoder:
    """A ready-to-run sentence encoder (weights on `device`, in `dtype`, in eval mode).

    prompts: named text prefixes from config_sentence_transformers.json (e.g. "query" ->
    "query: "): the caller puts the prefix before the text and tokenizes the whole, which is what
    sentence-transformers' `encode(prompt_name=...)` does. default_prompt_name: the prompt used
    when none is named (None: no prefix).

    task: "embed" (a row is a sentence embedding), "rerank" (a row is one relevance logit of a
    (query, document) pair) or "classify" (a row is one logit per label). labels: a head's
    label names in label-id order (config.json's id2label); () for an embedding model.
    """

    name: str
    model: SentenceModel
    tokenizer: TextTokenizer
    max_seq_len: int
    device: torch.device
    dtype: torch.dtype
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    task: str = "embed"
    labels: tuple[str, ...] = ()
    # A reranker's score from its logit: "sigmoid" (sentence-transformers' default) or "identity".
    score_activation: str = "sigmoid"
    # A classifier whose config.json problem_type is multi_label_classification: each label is
    # scored on its own (sigmoid), not as one softmax over the labels.
    multi_label: bool = False

    @property
    def dimensions(self) -> int:
        """Size of each row: the embeddings the pipeline returns (a Dense module changes it), or
        a head's number of labels."""
        return self.model.dimensions

    @property
    def hidden_size(self) -> int:
        """Width of the encoder's hidden states (the packed buffers' width)."""
        return self.model.config.hidden_size

    @property
    def attention_width(self) -> int:
        """Width of attention's output (the hidden size, except where heads are sized apart)."""
        return self.model.config.attention_width

    @property
    def normalized(self) -> bool:
        """Whether the pipeline ends with Normalize: rows of unit length (never for a head)."""
        return self.model.pipeline.normalized

    @property
    def family(self) -> str:
        """The config.json model_type (`config.SUPPORTED_MODEL_TYPES`)."""
        return self.model.config.family

    @property
    def pooling(self) -> str:
        """The pooling mode (sentence-transformers' name; several joined by "+"); a head's
        pooling of the token states ("cls", or ModernBERT's "mean")."""
        return self.model.pipeline.pooling.name

    def prompt(self, prompt_name: str | None) -> str:
        """The prefix for `prompt_name` (None: the default prompt's, or ""). KeyError, naming
        the known prompts, for an unknown name."""
        if prompt_name is None:
            prompt_name = self.default_prompt_name
            if prompt_name is None:
                return ""
        if prompt_name not in self.prompts:
            known = ", ".join(sorted(self.prompts)) or "none"
            raise KeyError(f"unknown prompt_name {prompt_name!r} (this model's prompts: {known})")
        return self.prompts[prompt_name]

    @torch.inference_mode()
    def embed(self, texts: list[str], prompt_name: str | None = None) -> torch.Tensor:
        """Plain eager embeddings (padded layout, no graphs): (n, dimensions) float32 on CPU
        (for a head: the logits of single texts).

        A reference and a convenience; the service goes through the runner instead.
        """
        prefix = self.prompt(prompt_name)
        ids = self.tokenizer.encode([prefix + t for t in texts] if prefix else texts)
        return self._forward(ids)

    @torch.inference_mode()
    def score(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Plain eager rows of (query, document) pairs, tokenized with the pair template: for a
        head, the (n, num_labels) float32 logits on CPU. A reference, like `embed`."""
        return self._forward(self.tokenizer.pair_ids(pairs))

    def _forward(self, ids: list[list[int]]) -> torch.Tensor:
        """The padded forward of tokenized rows: (n, dimensions) float32 on CPU."""
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


def cpu_has_native_bf16() -> bool:
    """True where this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), so a bfloat16
    forward beats float32. Without it torch computes bfloat16 by converting through float32, so
    callers choosing a default keep float32 there."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, since 2.1
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def check_device_dtype(device: torch.device | str, dtype: torch.dtype) -> torch.device:
    """Validate the (device, dtype) pair; returns the torch.device.

    float32 runs everywhere; float16 and bfloat16 on CUDA; bfloat16 also on CPU (fast where
    `cpu_has_native_bf16`; correct elsewhere, with no speed-up expected). float16 is refused on
    CPU: few CPUs multiply it in hardware and torch's CPU kernels for it are slow.
    """
    dev = torch.device(device)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    if dev.type == "cpu" and dtype == torch.float16:
        raise ValueError(f"{dtype} is only supported on CUDA; use float32 or bfloat16 on CPU")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {dev}")
    return dev
