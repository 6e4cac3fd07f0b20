"""Rerankers of real size without the hub: an ms-marco-MiniLM-L-6-v2-shaped cross-encoder (the
rerank benchmark's default), and a DeBERTa-v3-xsmall-shaped one (`build_deberta_reranker`).

The MiniLM one: `BertForSequenceClassification` with one label (the architecture and size of
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
from typing import Any

NAME = "minilm-l6-reranker"
COMPLETE_MARK = ".complete"  # written last: the directory is whole


def already_built(out: Path) -> bool:
    """Whether `out` already holds a whole model; if not, the libraries are told to stay off
    the network while it is built."""
    if (out / COMPLETE_MARK).is_file():
        return True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return False


def _save(model: Any, tokenizer: Any, out: Path) -> Path:
    """The transformers model and tokenizer saved beside `out` (its "-hf" sibling), then as
    `CrossEncoder.save` writes them to `out`, marked whole last."""
    from sentence_transformers import CrossEncoder

    hf_dir = out.with_name(out.name + "-hf")
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))
    CrossEncoder(str(hf_dir), device="cpu").save(str(out))
    (out / COMPLETE_MARK).write_text("ok\n")
    return out


def build_minilm_reranker(root: Path, seed: int = 0) -> Path:
    """The reranker's directory under `root`, built there once (reused when already complete)."""
    out = Path(root) / f"{NAME}-s{seed}"
    if already_built(out):
        return out
    import torch
    from safetensors.torch import load_file
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
    tokenizer = AutoTokenizer.from_pretrained(str(body_dir))
    return _save(model.eval(), tokenizer, out)


DEBERTA_NAME = "deberta-v3-xsmall-reranker"


def build_deberta_reranker(root: Path, seed: int = 0) -> Path:
    """A DeBERTa-v3-xsmall-shaped reranker (the shape of mxbai-rerank-xsmall-v1: 12 layers,
    hidden 384, 6 heads, 256 position buckets, c2p and p2c with shared keys), random weights
    (transformers' own initialisation, seeded), with the bundled MiniLM's WordPiece tokenizer
    (its 30,522 ids as the vocabulary) so texts split into as many tokens as with a real
    tokenizer. Saved with `CrossEncoder.save`. For `python -m bench rerank --model DIR`: the speed
    of the DeBERTa path against transformers' own; the scores mean nothing."""
    out = Path(root) / f"{DEBERTA_NAME}-s{seed}"
    if already_built(out):
        return out
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    from models import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    # transformers reads the DeBERTa keys it does not declare (position_buckets, ...) from kwargs.
    settings: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        intermediate_size=1536,
        max_position_embeddings=512,
        type_vocab_size=0,
        relative_attention=True,
        position_buckets=256,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
        layer_norm_eps=1e-7,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )
    config = DebertaV2Config(**settings)
    torch.manual_seed(seed)
    return _save(DebertaV2ForSequenceClassification(config).eval(), tokenizer, out)


if __name__ == "__main__":  # python -m bench.rerank_model DIR: build the DeBERTa one there
    import sys

    print(build_deberta_reranker(Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")))
