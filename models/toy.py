"""A tiny deterministic BERT sentence encoder with its own character-level tokenizer.

Same code paths as the real model (both layouts, mean pooling, Normalize) at a fraction of the
cost, so runner and service tests run in milliseconds. Weights come from a seeded generator on
the CPU, so every process (and every device) gets the same model.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from models.config import EncoderConfig
from models.encoder import SentenceEncoder, check_device_dtype
from models.model import SentenceModel
from models.pipeline import Normalize, Pooling, SentencePipeline
from models.tokenizer import TextTokenizer
from models.transformer import TransformerEncoder

TOY_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
# Lower-case letters, digits, punctuation and the space: anything else maps to [UNK].
TOY_CHARS = sorted(set(string.ascii_lowercase + string.digits + string.punctuation + " "))
TOY_MAX_SEQ_LEN = 64


def toy_config() -> EncoderConfig:
    return EncoderConfig(
        vocab_size=len(TOY_SPECIALS) + len(TOY_CHARS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=TOY_MAX_SEQ_LEN,
    )


def make_toy_tokenizer(max_seq_len: int = TOY_MAX_SEQ_LEN) -> TextTokenizer:
    """One token per character (lower-cased, whitespace runs collapsed), [CLS] ... [SEP]."""
    vocab = {tok: i for i, tok in enumerate(TOY_SPECIALS + TOY_CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return TextTokenizer(tok, max_seq_len, pad_id=vocab["[PAD]"])


@torch.no_grad()
def _seeded_init(model: TransformerEncoder, seed: int) -> None:
    # Wider than BERT's 0.02 init so different inputs give clearly different embeddings.
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "norm" in name.lower():
            # LayerNorm: weight around 1, bias around 0.
            base = 1.0 if name.endswith("weight") else 0.0
            p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def make_toy_encoder(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *, seed: int = 0
) -> SentenceEncoder:
    """A 2-layer, 32-dim BERT (4 heads), mean pooling and Normalize, max 64 tokens,
    deterministic for a given seed."""
    dev = check_device_dtype(device, dtype)
    cfg = toy_config()
    body = TransformerEncoder(cfg)
    _seeded_init(body, seed)
    pipeline = SentencePipeline(Pooling(("mean",)), [Normalize()], cfg.hidden_size)
    model = SentenceModel(body, pipeline).to_serving(dev, dtype)
    return SentenceEncoder(
        name="toy-bert",
        model=model,
        tokenizer=make_toy_tokenizer(TOY_MAX_SEQ_LEN),
        max_seq_len=TOY_MAX_SEQ_LEN,
        device=dev,
        dtype=dtype,
    )
