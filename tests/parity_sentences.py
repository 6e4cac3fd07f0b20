"""Sentences for the parity tests against sentence-transformers: one word to past the
truncation limit, non-ASCII, emoji, markup. Shared by the model, runner and GPU tests."""

SENTENCES = [
    "Hi",
    "cat",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème brûlée, naïve façade: déjà vu!",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "I love pizza 🍕🍕 and sushi 🍣!!!",
    "?!?!... ;-) ¯\\_(ツ)_/¯",
    "   leading and trailing whitespace   ",
    "Numbers like 3.14159, 2,718 and 1e-10 appear here.",
    "A sentence-embedding model maps text to a dense vector space.",
    "CUDA graphs replace many kernel launches with one graph launch.",
    "word " * 300,  # truncated at 256 tokens
    " ".join(f"token{i}" for i in range(200)),  # word pieces: far past 256 tokens
    "Ein kurzer deutscher Satz mit Umlauten: Größe, Übermaß, Ärger.",
    "¿Dónde está la biblioteca? ¡Allí!",
    "e-mail: someone@example.com, url: https://example.org/path?q=1",
    "😀😃😄😁😆😅😂🤣",
    "a",
    "In 1905, Einstein published four groundbreaking papers that changed physics forever, "
    "covering the photoelectric effect, Brownian motion, special relativity and mass-energy.",
    "The mitochondria is the powerhouse of the cell.",
    "<html><body>markup &amp; entities</body></html>",
]
