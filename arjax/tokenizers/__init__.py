"""Tokenizers map images to tokens and back; configs name them via `config.tokenizer.name`."""
from arjax.tokenizers.base import TOKENIZERS, Tokenizer, build_tokenizer
from arjax.tokenizers import cached, char, pixel  # noqa: F401  (register their names)

__all__ = ["TOKENIZERS", "Tokenizer", "build_tokenizer"]
