"""Helpers of the tests that need a text encoder: tiny tokenizers saved locally (no download)."""

from kuosan.interop.tiny import WORDS, word_tokenizer

__all__ = ["WORDS", "word_tokenizer"]
