"""Text tokenizers: characters of a fixed vocabulary ('char') and plain token ids ('sequence').

Text data comes already tokenized in the batch (`batch['tokens']` int32 [B, L], written by the
text sources of arjax.data.text), so `encode` of images is refused; `encode_text` / `decode_text`
map strings to ids and back. A sequence of L tokens is laid out as a 1 x L grid (row 0, column
i), so raster orders, 2D RoPE and the KV-cached sequential sampler run on text unchanged.

'char': the 65 characters of tiny Shakespeare (newline, space, !$&',-.3:;?, A-Z, a-z), id =
index in `CHARS`. 'sequence': ids 0..vocab_size-1 without characters (the generated recall
tasks), decoded as space-separated numbers.

Legend: B batch, L tokens per sequence (`tokenizer.length`), V vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np

from arjax.registry import read_fields
from arjax.tokenizers.base import TOKENIZERS

# The fixed character vocabulary: every character of tiny Shakespeare, in code-point order.
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CHAR_IDS = {c: i for i, c in enumerate(CHARS)}


def first_outside(text: str) -> int:
  """Index of the first character of `text` not in CHARS (-1: none)."""
  bad = set(text) - set(CHARS)
  if not bad:
    return -1
  return min(text.index(c) for c in bad)


def encode_chars(text: str) -> np.ndarray:
  """str -> int32 [len(text)] ids in CHARS; a character outside fails naming it and its index."""
  i = first_outside(text)
  if i >= 0:
    raise ValueError(f"character {text[i]!r} at index {i} is not in the character vocabulary "
                     f"(the {len(CHARS)} characters of tiny Shakespeare: {CHARS!r})")
  table = np.zeros(128, np.int32)  # every character of CHARS is ASCII.
  table[[ord(c) for c in CHARS]] = np.arange(len(CHARS), dtype=np.int32)
  return table[np.frombuffer(text.encode("ascii"), np.uint8)]


@dataclasses.dataclass(frozen=True)
class CharFields:
  """`config.tokenizer` of tokenizer 'char'."""
  length: int = 256               # tokens per sequence L (must equal data.seq_len).


@dataclasses.dataclass(frozen=True)
class SequenceFields:
  """`config.tokenizer` of tokenizer 'sequence' (token ids without characters)."""
  vocab_size: int = 0             # V (must be set: > 1).
  length: int = 0                 # tokens per sequence L (must be set: > 0).


class TextTokenizer:
  """A 1 x L grid of text tokens (see the module docstring)."""

  is_text = True   # the trainer evaluates text models with bits/char and text samples.

  def __init__(self, vocab_size: int, length: int, chars: str = "", where: str = "tokenizer"):
    if vocab_size <= 1:
      raise ValueError(f"{where}.vocab_size={vocab_size}; expected > 1")
    if length <= 0:
      raise ValueError(f"{where}.length={length}; expected > 0")
    self.vocab_size = int(vocab_size)
    self.length = int(length)
    self.chars = chars
    self.token_dim = 0
    self.grid: Tuple[int, int] = (1, self.length)
    self.tokens_per_image = self.length

  def encode(self, images):
    raise ValueError("text tokenizers take tokenized text: the batch must carry 'tokens' "
                     "(data.source 'tinyshakespeare', 'txt:PATH', 'recall:...', 'treecall:...')")

  def decode(self, tokens):
    raise ValueError("text tokens do not decode to images: use decode_text")

  def encode_text(self, text: str) -> np.ndarray:
    """str -> int32 [len(text)] (the 'char' vocabulary)."""
    if not self.chars:
      raise ValueError("tokenizer 'sequence' has no characters: it takes token ids")
    return encode_chars(text)

  def decode_text(self, tokens) -> List[str]:
    """int [B, L] -> B strings (characters, or space-separated ids for 'sequence')."""
    tokens = np.asarray(tokens)
    if self.chars:
      table = np.array(list(self.chars))
      return ["".join(table[row]) for row in tokens]
    return [" ".join(str(int(t)) for t in row) for row in tokens]

  def grid_positions(self):
    """(row 0, column i) of token i."""
    return np.stack([np.zeros(self.length, np.int32),
                     np.arange(self.length, dtype=np.int32)], -1)


@TOKENIZERS.register("char", fields=CharFields)
def _build_char(config):
  t = read_fields(CharFields, config.tokenizer, "tokenizer 'char' (config.tokenizer)")
  return TextTokenizer(len(CHARS), t.length, CHARS, where="tokenizer")


@TOKENIZERS.register("sequence", fields=SequenceFields)
def _build_sequence(config):
  t = read_fields(SequenceFields, config.tokenizer, "tokenizer 'sequence' (config.tokenizer)")
  return TextTokenizer(t.vocab_size, t.length, "", where="tokenizer")
