"""A reranker of real size without the hub: an ms-marco-MiniLM-L-6-v2-shaped cross-encoder.

`BertForSequenceClassification` with one label (the architecture and size of
cross-encoder/ms-marco-MiniLM-L-6-v2: 6 layers, hidden 384, 12 heads, a linear head on the
pooled [CLS]) whose body is the bundled all-MiniLM-L6-v2 (`models.default_model_path()`: its
`model.safetensors` loaded into the model's `bert.` body) and whose classifier head is random
with a fixed seed; saved with sentence-transformers' `CrossEncoder.save`, the layout the sidecar
and `CrossEncoder(path)` both load. Not ms-marco's trained weights: the scores mean nothing, the
speed (what the rerank benchmark measures) is that model's.
"""

from __future__ import annotations

import os
from pathlib import Path

NAME = "minilm-l6-reranker"


def build_minilm_reranker(root: Path, seed: int = 0) -> Path:
    """The reranker's directory under `root`, built there once (reused when already complete)."""
    out = Path(root) / f"{NAME}-s{seed}"
    done = out / ".complete"
    if done.is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from models import default_model_path

    body_dir = Path(default_model_path())
    config = BertConfig.from_pretrained(str(body_dir), num_labels=1)
    torch.manual_seed(seed)  # the classifier head (and the pooler if the body has none)
    model = BertForSequenceClassification(config)
    state = load_file(str(body_dir / "model.safetensors"))
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    extra = [k for k in unexpected if not k.endswith("position_ids")]
    if extra or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"MiniLM body does not fit: missing {missing}, unexpected {extra}")
    model.eval()
    hf_dir = Path(root) / f"{NAME}-s{seed}-hf"
    model.save_pretrained(str(hf_dir))
    AutoTokenizer.from_pretrained(str(body_dir)).save_pretrained(str(hf_dir))
    CrossEncoder(str(hf_dir), device="cpu").save(str(out))
    done.write_text("ok\n")
    return out
