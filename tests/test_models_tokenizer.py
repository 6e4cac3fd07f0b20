"""The tokenizer of each family: single texts, (query, document) pairs through the
post-processor's pair template with the document truncated first, and the pad id; checked
against the family's own `transformers` tokenizer loaded from the same directory."""

from __future__ import annotations

import pytest
from model_builders import FAMILIES, MAX_SEQ_LEN, TinySpec, offline_hub, tiny_model

from models import InputTooLong, load_sentence_encoder

PAIRS = [
    ("what is a graph", "a cuda graph replaces many kernel launches with one launch"),
    ("hello", ""),
    ("query", "document " * 80),  # the document is cut
    ("the quick brown fox " * 20, "lazy dog"),  # the query alone is too long: both are cut
    ("", "hello world"),
]


@pytest.fixture(scope="module", params=FAMILIES)
def tokenizers(request):
    """(our TextTokenizer, the transformers tokenizer) of a tiny model of each family."""
    folder = tiny_model(TinySpec(request.param, "mean"))
    with offline_hub():
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(folder))
    return load_sentence_encoder(folder).tokenizer, hf


def test_pad_id_is_the_tokenizers_own(tokenizers):
    ours, hf = tokenizers
    assert ours.pad_id == hf.pad_token_id
    # The id is the pad token's own ([PAD] 0 in BERT, <pad> 1 in roberta-likes, 0 in ALBERT,
    # Qwen3's end of text).
    pads = ("[PAD]", "<pad>", "<|endoftext|>")
    assert hf.convert_ids_to_tokens(ours.pad_id) == hf.pad_token in pads


def test_pairs_match_transformers(tokenizers):
    ours, hf = tokenizers
    got = ours.encode_pairs(PAIRS)
    assert len(got.ids) == len(got.type_ids) == len(PAIRS)
    for i, (q, d) in enumerate(PAIRS):
        if not q or not d:
            continue  # transformers takes an empty string for "no pair" (see below)
        fits = len(hf(q)["input_ids"]) + 2 < MAX_SEQ_LEN
        ref = hf(
            q,
            d,
            truncation="only_second" if fits else "longest_first",
            max_length=MAX_SEQ_LEN,
            return_token_type_ids=True,
        )
        assert got.ids[i] == ref["input_ids"], (i, hf.convert_ids_to_tokens(got.ids[i]))
        assert len(got.ids[i]) <= MAX_SEQ_LEN
        assert len(got.type_ids[i]) == len(got.ids[i])
        if hf.pad_token == "[PAD]":  # BERT's template marks the document with type 1
            assert got.type_ids[i] == ref["token_type_ids"]
            assert got.type_ids[i][0] == 0 and got.type_ids[i][-1] == 1


def test_an_empty_document_is_still_a_pair(tokenizers):
    """The pair template with nothing in B: the query's ids, then only the template's special
    tokens (BERT's [SEP], RoBERTa's </s></s> </s>, Gemma's <bos> <eos>)."""
    ours, hf = tokenizers
    single = ours.encode(["hello"])[0]
    ids = ours.encode_pairs([("hello", "")]).ids[0]
    assert ids[: len(single)] == single
    assert len(ids) > len(single) and set(ids[len(single) :]) <= set(hf.all_special_ids)


def test_a_long_document_is_cut_before_the_query(tokenizers):
    ours, _ = tokenizers
    short_query = ours.encode(["query"])[0]
    ids = ours.encode_pairs([("query", "document " * 80)]).ids[0]
    assert len(ids) == MAX_SEQ_LEN
    assert ids[: len(short_query) - 1] == short_query[:-1]  # the query survives whole


def test_pairs_one_by_one_equal_the_batch(tokenizers):
    ours, _ = tokenizers
    batch = ours.encode_pairs(PAIRS)
    for i, pair in enumerate(PAIRS):
        one = ours.encode_pairs([pair])
        assert (one.ids[0], one.type_ids[0]) == (batch.ids[i], batch.type_ids[i])
    assert ours.encode_pairs([]) == ([], [])
    with pytest.raises(TypeError):
        ours.encode_pairs(("a", "b"))


def test_single_texts_are_truncated_to_the_model_limit(tokenizers):
    ours, hf = tokenizers
    texts = ["hello world", "document " * 80]
    ids = ours.encode(texts)
    assert ids == [hf(t, truncation=True, max_length=MAX_SEQ_LEN)["input_ids"] for t in texts]
    assert len(ids[1]) == MAX_SEQ_LEN


def test_declined_truncation_raises_with_the_whole_length(tokenizers):
    ours, hf = tokenizers
    long = "document " * 80
    whole = len(hf(long)["input_ids"])
    assert whole > MAX_SEQ_LEN
    with pytest.raises(InputTooLong) as refused:
        ours.encode(["hello world", long], truncate=False)
    assert (refused.value.index, refused.value.tokens) == (1, whole)
    assert refused.value.max_tokens == MAX_SEQ_LEN
    pair_whole = len(hf("a query", long)["input_ids"])
    with pytest.raises(InputTooLong) as refused:
        ours.encode_pairs([("a query", "short"), ("a query", long)], truncate=False)
    assert (refused.value.index, refused.value.tokens) == (1, pair_whole)
    # what fits is encoded exactly as with truncation
    assert ours.encode(["hello world"], truncate=False) == ours.encode(["hello world"])
    assert ours.encode_pairs([("q", "d")], truncate=False) == ours.encode_pairs([("q", "d")])
