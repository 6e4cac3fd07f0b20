"""Text -> token ids with the `tokenizers` library: special tokens added, truncated, unpadded.

Padding is the runner's business (it picks the bucket), so the tokenizer never pads, whatever
the tokenizer.json says (all-MiniLM-L6-v2's ships with fixed padding to 128, which we turn off).
Single texts and (query, document) pairs each get their own `tokenizers.Tokenizer` copy, so
truncation settings never change under a concurrent call.

Token types reach a model that uses them (a BERT cross-encoder) inside the ids: `pair_ids` gives
each token id + type * `type_stride`, and the model's embeddings split them back. One int per
token crosses the processes and the graphs' input buffers, and the types are the pair template's
own, whatever the text holds (a literal "[SEP]" in a query stays type 0).
"""

from __future__ import annotations

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
    type_stride: set for a model that reads token types (the loader sets the model's vocabulary
    size): `pair_ids` folds each token's type into its id. None: every token is type 0.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        max_seq_len: int,
        *,
        pad_id: int,
        lowercase: bool = False,
        type_stride: int | None = None,
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
        self.type_stride: int | None = type_stride

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
    def from_json(
        cls, text: str, max_seq_len: int, *, pad_id: int, type_stride: int | None = None
    ) -> TextTokenizer:
        return cls(Tokenizer.from_str(text), max_seq_len, pad_id=pad_id, type_stride=type_stride)

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

    def pair_ids(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> list[list[int]]:
        """The ids a model reads for `encode_pairs(pairs, truncate)`: with `type_stride` set,
        each token's id + its type * type_stride (the model splits them back); else the ids."""
        encoded = self.encode_pairs(pairs, truncate)
        stride = self.type_stride
        if stride is None:
            return encoded.ids
        return [
            ids if not any(types) else [i + t * stride for i, t in zip(ids, types, strict=True)]
            for ids, types in zip(encoded.ids, encoded.type_ids, strict=True)
        ]

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
