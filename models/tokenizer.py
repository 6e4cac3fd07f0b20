"""Text -> token ids with the `tokenizers` library: special tokens added, truncated, unpadded.

Padding is the runner's business (it picks the bucket), so the tokenizer never pads, whatever
the tokenizer.json says (all-MiniLM-L6-v2's ships with fixed padding to 128, which we turn off).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`: `encode(texts) -> list[list[int]]`."""

    def __init__(self, tokenizer: Tokenizer, max_seq_len: int, pad_token: str = "[PAD]") -> None:
        if max_seq_len < 2:
            raise ValueError(
                f"max_seq_len must be >= 2 (room for the special tokens), got {max_seq_len}"
            )
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no {pad_token!r} token")
        tokenizer.no_padding()
        # Truncation counts the special tokens ([CLS] ... [SEP]), as sentence-transformers does.
        tokenizer.enable_truncation(max_length=max_seq_len)
        self._tok = tokenizer
        self.max_seq_len = max_seq_len
        self.pad_id: int = pad_id
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_file(cls, path: str | Path, max_seq_len: int) -> TextTokenizer:
        return cls(Tokenizer.from_file(str(path)), max_seq_len)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text: special tokens added, at most max_seq_len, no padding."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not a single string")
        if not texts:
            return []
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=True)]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, max_seq_len={self.max_seq_len})"
