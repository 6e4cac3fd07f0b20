"""Text -> token ids with the `tokenizers` library: special tokens added, truncated, unpadded.

Padding is the runner's business (it picks the bucket), so the tokenizer never pads, whatever
the tokenizer.json says (all-MiniLM-L6-v2's ships with fixed padding to 128, which we turn off).
Single texts and (query, document) pairs each get their own `tokenizers.Tokenizer` copy, so
truncation settings never change under a concurrent call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from tokenizers import Tokenizer, normalizers


class EncodedPairs(NamedTuple):
    """Per pair: token ids, and token type ids as the post-processor's pair template assigns
    them (BERT's: 1 for the document and its [SEP]; RoBERTa's and MPNet's: all 0)."""

    ids: list[list[int]]
    type_ids: list[list[int]]


class InputTooLong(ValueError):
    """An input longer than the model's maximum, where the caller declined truncation."""

    def __init__(self, index: int, tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, more than the model's maximum of {max_tokens}"
        )
        self.index, self.tokens, self.max_tokens = index, tokens, max_tokens


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`: `encode(texts)`, `encode_pairs(pairs)`.

    pad_id: the id padding positions get (they are masked out; the model's own pad token).
    lowercase: lower-case the text first, where the normalizer does not already (what
    sentence-transformers does for `do_lower_case: true` in sentence_bert_config.json).
    """

    def __init__(
        self, tokenizer: Tokenizer, max_seq_len: int, *, pad_id: int, lowercase: bool = False
    ) -> None:
        if max_seq_len < 2:
            raise ValueError(
                f"max_seq_len must be >= 2 (room for the special tokens), got {max_seq_len}"
            )
        vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad id {pad_id} is outside the tokenizer's {vocab_size} tokens")
        if lowercase:
            _add_lowercase(tokenizer)
        tokenizer.no_padding()
        # Truncation counts the special tokens ([CLS] ... [SEP]), as sentence-transformers does.
        tokenizer.enable_truncation(max_length=max_seq_len)
        self._tok = tokenizer
        # Pair copies, made on first use (a large vocabulary takes a while to copy): the
        # document is cut first; a query too long for that falls back to cutting the longer.
        self._pairs: tuple[Tokenizer, Tokenizer] | None = None
        self._whole: Tokenizer | None = None  # no truncation: to say how long a refused input is
        self.max_seq_len = max_seq_len
        self.pad_id: int = pad_id
        self.vocab_size: int = vocab_size

    @classmethod
    def from_file(
        cls, path: str | Path, max_seq_len: int, *, pad_id: int, lowercase: bool = False
    ) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_seq_len, pad_id=pad_id, lowercase=lowercase)

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json text (lower-casing included): `from_json` rebuilds
        it in another process."""
        return str(self._tok.to_str())

    @classmethod
    def from_json(cls, text: str, max_seq_len: int, *, pad_id: int) -> TextTokenizer:
        return cls(Tokenizer.from_str(text), max_seq_len, pad_id=pad_id)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, texts: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids per text: special tokens added, at most max_seq_len, no padding. With
        `truncate` false a longer text raises InputTooLong instead of being cut."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not a single string")
        if not texts:
            return []
        encs = self._tok.encode_batch_fast(texts, add_special_tokens=True)
        if not truncate:
            self._refuse_cut(encs, texts)
        return [e.ids for e in encs]

    def encode_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> EncodedPairs:
        """(query, document) pairs through the post-processor's pair template (e.g.
        [CLS] q [SEP] d [SEP], or <s> q </s></s> d </s>), at most max_seq_len tokens each. With
        `truncate` false a longer pair raises InputTooLong instead of being cut."""
        if isinstance(pairs, tuple):
            raise TypeError("encode_pairs takes a list of (query, document) pairs")
        if not pairs:
            return EncodedPairs([], [])
        batch = [(q, d) for q, d in pairs]
        second, longest = self._pair_tokenizers()
        try:
            encs = second.encode_batch(batch, add_special_tokens=True)
        except Exception:  # the Rust side: some query too long to keep whole; pair by pair
            encs = []
            for q, d in batch:
                try:
                    encs.append(second.encode(q, d, add_special_tokens=True))
                except Exception:
                    encs.append(longest.encode(q, d, add_special_tokens=True))
        if not truncate:
            self._refuse_cut(encs, batch)
        return EncodedPairs([e.ids for e in encs], [e.type_ids for e in encs])

    def _refuse_cut(self, encs: Sequence[Any], inputs: Sequence[str | tuple[str, str]]) -> None:
        """InputTooLong for the first input truncation cut (its overflow is not empty)."""
        for i, enc in enumerate(encs):
            if enc.overflowing:
                if self._whole is None:
                    self._whole = Tokenizer.from_str(self._tok.to_str())
                    self._whole.no_truncation()
                item = inputs[i]
                whole = (
                    self._whole.encode(item, add_special_tokens=True)
                    if isinstance(item, str)
                    else self._whole.encode(*item, add_special_tokens=True)
                )
                raise InputTooLong(i, len(whole.ids), self.max_seq_len)

    def pair_type_separator(self) -> int | None:
        """The separator after whose first occurrence the pair template assigns token type 1
        (BERT's `[CLS] A [SEP] B [SEP]`: [SEP]), or None where every pair token is type 0
        (RoBERTa, XLM-RoBERTa, MPNet; no template). ValueError for a template whose types are
        not "0 up to and including the first separator, 1 after it" (the model could not
        derive them from the ids), naming what it found.

        The template is read from the post-processor, then checked on a sample pair.
        """
        processor = self._tok.post_processor
        state = json.loads(processor.__getstate__()) if processor is not None else None
        separator = _template_separator(state)
        if separator is not None:
            enc = self._pair_tokenizers()[0].encode("a b", "c d", add_special_tokens=True)
            seen, derived = False, []
            for token in enc.ids:
                derived.append(int(seen))
                seen = seen or token == separator
            if derived != enc.type_ids:
                raise ValueError(
                    f"the pair template's token types {enc.type_ids} (ids {enc.ids}) do not "
                    f"switch to 1 after the first separator {separator}"
                )
        return separator

    def _pair_tokenizers(self) -> tuple[Tokenizer, Tokenizer]:
        if self._pairs is None:  # a race only builds the same copies twice
            text = self._tok.to_str()
            second, longest = Tokenizer.from_str(text), Tokenizer.from_str(text)
            second.enable_truncation(max_length=self.max_seq_len, strategy="only_second")
            longest.enable_truncation(max_length=self.max_seq_len, strategy="longest_first")
            self._pairs = (second, longest)
        return self._pairs

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_seq_len={self.max_seq_len})"


def _template_separator(state: Any) -> int | None:
    """The separator id of a post-processor's serialised state (see `pair_type_separator`)."""
    if not isinstance(state, dict):
        return None
    kind = state.get("type")
    if kind == "Sequence":
        found = {_template_separator(p) for p in state.get("processors", [])} - {None}
        if len(found) > 1:
            raise ValueError(f"post-processors with different pair templates: {state}")
        return found.pop() if found else None
    if kind == "BertProcessing":  # [CLS] A [SEP] B [SEP], types 0 0 0 1 1
        return int(state["sep"][1])
    if kind != "TemplateProcessing":  # RobertaProcessing and the rest: every type 0
        return None
    pair, specials = state.get("pair") or [], state.get("special_tokens") or {}
    types = [next(iter(item.values()))["type_id"] for item in pair]
    if not any(types):
        return None
    switch = types.index(1) if 1 in types else 0
    before, at = pair[:switch], pair[switch - 1] if switch else {}
    token = at.get("SpecialToken", {}).get("id")
    ids = specials.get(token, {}).get("ids", []) if token is not None else []
    earlier = [
        specials.get(item["SpecialToken"]["id"], {}).get("ids", [])
        for item in before[:-1]
        if "SpecialToken" in item
    ]
    if (
        set(types) != {0, 1}
        or types[switch:] != [1] * (len(types) - switch)
        or len(ids) != 1
        or any(ids[0] in e for e in earlier)
    ):
        raise ValueError(f"pair template {pair} does not switch to type 1 after a separator")
    return int(ids[0])


def _add_lowercase(tokenizer: Tokenizer) -> None:
    """Put a Lowercase normalizer first unless one is there (sentence-transformers' rule)."""
    current = tokenizer.normalizer
    if isinstance(current, normalizers.Lowercase):
        return
    if isinstance(current, normalizers.Sequence):
        parts = list(current)  # type: ignore[call-overload]
        if any(isinstance(n, normalizers.Lowercase) for n in parts):
            return
        tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), *parts])
    elif current is None:
        tokenizer.normalizer = normalizers.Lowercase()
    else:
        tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), current])
