"""The plain-torch BERT on the toy model: both layouts agree, padding never matters."""

from __future__ import annotations

import pytest
import torch

from models import EncoderConfig, PackedLayout, make_toy_encoder
from models.layers import attend


@pytest.fixture(scope="module")
def toy():
    return make_toy_encoder()


TEXTS = ["a", "hello world", "the quick brown fox jumps over the lazy dog", "x" * 80, "", "12 34!"]


def padded(ids: list[list[int]], S: int | None = None, B: int | None = None):
    S = S or max(len(x) for x in ids)
    B = B or len(ids)
    input_ids = torch.zeros((B, S), dtype=torch.int64)
    mask = torch.zeros((B, S), dtype=torch.bool)
    mask[:, 0] = True  # padding rows: a length-1 dummy request
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = True
    return input_ids, mask


def packed(encoder, ids: list[list[int]]) -> torch.Tensor:
    lens = [len(x) for x in ids]
    layout = PackedLayout.build(
        lens, attention_width=encoder.hidden_size, device="cpu", dtype=torch.float32
    )
    flat = torch.tensor([t for row in ids for t in row])
    with torch.inference_mode():
        return encoder.model.forward_packed(flat, layout.positions, layout)


def test_toy_is_deterministic_and_normalised():
    a, b = make_toy_encoder(), make_toy_encoder()
    ea, eb = a.embed(TEXTS), b.embed(TEXTS)
    assert torch.equal(ea, eb)
    assert ea.shape == (len(TEXTS), 32) and ea.dtype == torch.float32
    torch.testing.assert_close(ea.norm(dim=1), torch.ones(len(TEXTS)))
    # Different inputs give different embeddings (the model is not degenerate).
    sims = ea @ ea.T
    assert (sims - torch.eye(len(TEXTS))).max() < 0.999
    assert not torch.equal(make_toy_encoder(seed=1).embed(TEXTS), ea)


def test_toy_tokenizer_truncates_and_adds_specials(toy):
    ids = toy.tokenizer.encode(["ab", "", "z" * 500])
    assert ids[0][0] == ids[1][0] == 2 and ids[0][-1] == ids[1][-1] == 3  # [CLS] ... [SEP]
    assert len(ids[0]) == 4 and len(ids[1]) == 2
    assert len(ids[2]) == toy.max_seq_len and ids[2][-1] == 3
    with pytest.raises(TypeError):
        toy.tokenizer.encode("not a list")


def test_padding_never_changes_real_rows(toy):
    ids = toy.tokenizer.encode(TEXTS)
    with torch.inference_mode():
        tight = toy.model(*padded(ids))
        # More sequence padding and extra padding rows: real rows identical within 1e-6.
        loose = toy.model(*padded(ids, S=64, B=9))[: len(ids)]
        alone = torch.cat([toy.model(*padded([row])) for row in ids])
    torch.testing.assert_close(loose, tight, atol=1e-6, rtol=0)
    torch.testing.assert_close(alone, tight, atol=1e-6, rtol=0)


def test_packed_layout_matches_padded(toy):
    ids = toy.tokenizer.encode(TEXTS)
    with torch.inference_mode():
        ref = toy.model(*padded(ids))
    # Any order: sorted (few attention groups) and unsorted (more groups) agree.
    torch.testing.assert_close(packed(toy, ids), ref, atol=1e-5, rtol=0)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    torch.testing.assert_close(packed(toy, [ids[i] for i in order]), ref[order], atol=1e-5, rtol=0)


def test_packed_layout_groups_and_positions():
    lens = [40, 33, 20, 20, 17, 5, 3]
    lay = PackedLayout.build(lens, attention_width=8, device="cpu", dtype=torch.float32)
    assert lay.num_tokens == sum(lens) and lay.num_reqs == len(lens)
    spans = [(g.start, g.end, g.num_reqs, g.max_len) for g in lay.groups]
    assert spans == [(0, 73, 2, 40), (73, 130, 3, 20), (130, 138, 2, 5)]
    assert lay.groups[0].index is not None
    # Positions restart at 0 for each request.
    expected = torch.cat([torch.arange(n) for n in lens])
    assert torch.equal(lay.positions, expected)
    assert lay.token_counts.tolist() == lens
    assert lay.lengths.view(-1).tolist() == [float(n) for n in lens]
    uniform = PackedLayout.build([7, 7, 7], attention_width=8, device="cpu", dtype=torch.float32)
    assert len(uniform.groups) == 1 and uniform.groups[0].index is None
    with pytest.raises(ValueError):
        PackedLayout.build([3, 0], attention_width=8, device="cpu", dtype=torch.float32)


def test_packed_pieces_ignore_token_padding(toy):
    """Pieces are row-wise: token-bucket padding rows never reach real rows."""
    ids = toy.tokenizer.encode(TEXTS)
    lens = [len(x) for x in ids]
    lay = PackedLayout.build(lens, attention_width=32, device="cpu", dtype=torch.float32)
    T, Tpad = lay.num_tokens, lay.num_tokens + 37
    flat = torch.zeros(Tpad, dtype=torch.int64)
    flat[:T] = torch.tensor([t for row in ids for t in row])
    pos = torch.zeros(Tpad, dtype=torch.int64)
    pos[:T] = lay.positions
    bufs = [torch.full((Tpad, 32), 7.0), torch.full((Tpad, 32), -3.0)]
    attn = torch.full((Tpad, 32), 1e4)  # garbage in the padding rows must stay there
    pieces = toy.model.packed_pieces()
    assert len(pieces) == toy.model.config.num_hidden_layers + 1
    with torch.inference_mode():
        qkv = pieces[0](flat, pos, bufs[0])
        for i, piece in enumerate(pieces[1:]):
            toy.model.attend_packed(qkv, lay, attn)
            # A piece run twice (warm-up, then capture) gives the same result: inputs untouched.
            first = piece(bufs[i % 2], attn, bufs[(i + 1) % 2]).clone()
            qkv = piece(bufs[i % 2], attn, bufs[(i + 1) % 2])
            assert torch.equal(first, qkv)
        out = toy.model.pool_packed(qkv, lay)
        ref = toy.model(*padded(ids))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_attend_matches_explicit_softmax():
    torch.manual_seed(0)
    B, S, nh, d = 2, 5, 2, 4
    qkv = torch.randn(B, S, 3 * nh * d)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    y = attend(qkv, nh, mask.view(B, 1, 1, S))
    q, k, v = qkv.view(B, S, 3, nh, d).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / d**0.5
    scores = scores.masked_fill(~mask.view(B, 1, 1, S), float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, S, nh * d)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 30}, "divisible"),
        ({"hidden_act": "swish"}, "hidden_act"),
        ({"family": "gpt2"}, "model_type 'gpt2' is not supported"),
        ({"family": "roberta", "pad_token_id": 1, "max_position_embeddings": 3}, "usable"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"num_hidden_layers": 2.5}, "num_hidden_layers"),
        ({"pad_token_id": 99}, "pad_token_id"),
    ],
)
def test_config_validation(kwargs, message):
    base = dict(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    with pytest.raises(ValueError, match=message):
        EncoderConfig(**{**base, **kwargs})


def test_float16_is_refused_on_cpu():
    with pytest.raises(ValueError, match="only supported on CUDA"):
        make_toy_encoder(dtype=torch.float16)


def test_bfloat16_on_cpu_matches_float32():
    """bfloat16 runs on the CPU (weights and activations; pooling and the output in float32)."""
    texts = ["a short one", "a somewhat longer sentence with more words in it", "x"]
    ref = make_toy_encoder().embed(texts)
    enc = make_toy_encoder(dtype=torch.bfloat16)
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    out = enc.embed(texts)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    cos = torch.nn.functional.cosine_similarity(out, ref)
    assert cos.min() >= 0.995, cos
