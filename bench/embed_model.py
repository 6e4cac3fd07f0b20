"""Embedders of the decoder families' real shapes without the hub, for
`python -m bench service --model DIR`: the sidecar's path for them against sentence-transformers
on the same weights.

- `gemma`: EmbeddingGemma-300m's shape (24 layers, hidden 768, 3 query heads of 256 over one
  key/value head, intermediate 1152, local layers of 512 tokens with a global one every sixth)
  and its pipeline (mean, a Dense to 3072 and one back to 768, Normalize).
- `qwen3`: Qwen3-Embedding-0.6B's shape (28 layers, hidden 1024, 16 query heads of 128 over 8
  key/value heads, intermediate 3072) and its pipeline (last token, Normalize).

Random weights (transformers' own initialisation, seeded) and the bundled MiniLM's WordPiece
tokenizer, so texts split into as many tokens as with a real tokenizer while the embedding table
stays small (the table's size changes memory, not speed). The embeddings mean nothing; the speed
is that shape's.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.rerank_model import COMPLETE_MARK, already_built


def _save_embedder(model: Any, tokenizer: Any, modules: list[Any], out: Path) -> Path:
    """The transformers model and tokenizer beside `out` (its "-hf" sibling), then the
    sentence-transformers pipeline (`modules` after the Transformer) saved to `out`."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.transformer import Transformer

    hf_dir = out.with_name(out.name + "-hf")
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))
    transformer = Transformer(str(hf_dir), max_seq_length=512)
    SentenceTransformer(modules=[transformer, *modules], device="cpu").save(str(out))
    (out / COMPLETE_MARK).write_text("ok\n")
    return out


def build_gemma_embedder(root: Path, seed: int = 0) -> Path:
    out = Path(root) / f"embeddinggemma-300m-shaped-s{seed}"
    if already_built(out):
        return out
    import torch
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, Gemma3TextConfig, Gemma3TextModel

    from models import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=24,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=256,
        intermediate_size=1152,
        max_position_embeddings=2048,
        query_pre_attn_scalar=256,
        sliding_window=512,
        use_bidirectional_attention=True,
        pad_token_id=tokenizer.pad_token_id,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )
    torch.manual_seed(seed)
    identity = torch.nn.Identity()
    modules = [
        Pooling(768, pooling_mode="mean"),
        Dense(768, 3072, bias=False, activation_function=identity),
        Dense(3072, 768, bias=False, activation_function=identity),
        Normalize(),
    ]
    return _save_embedder(Gemma3TextModel(config).eval(), tokenizer, modules, out)


def build_qwen3_embedder(root: Path, seed: int = 0) -> Path:
    out = Path(root) / f"qwen3-embedding-0.6b-shaped-s{seed}"
    if already_built(out):
        return out
    import torch
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    from models import default_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()))
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=1024,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        intermediate_size=3072,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    modules = [Pooling(1024, pooling_mode="lasttoken"), Normalize()]
    return _save_embedder(Qwen3Model(config).eval(), tokenizer, modules, out)


BUILDERS = {"gemma": build_gemma_embedder, "qwen3": build_qwen3_embedder}

if __name__ == "__main__":  # python -m bench.embed_model DIR gemma|qwen3
    if len(sys.argv) != 3 or sys.argv[2] not in BUILDERS:
        print(f"usage: python -m bench.embed_model DIR {'|'.join(BUILDERS)}", file=sys.stderr)
        sys.exit(2)
    print(BUILDERS[sys.argv[2]](Path(sys.argv[1])))
