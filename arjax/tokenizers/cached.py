"""Pre-tokenized data: tokens come in the batch (`batch['tokens']`), written once by a
learned tokenizer's token cache (`python -m arjax.tokenize`). Only the vocabulary and grid are
known here; decoding to pixels needs the tokenizer checkpoint the config names.

Legend: B batch, N = grid*grid tokens.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from arjax.tokenizers.base import TOKENIZERS


class CachedTokens:

  def __init__(self, vocab_size: int, grid: int):
    if vocab_size <= 1 or grid <= 0:
      raise ValueError(f"tokenizer 'cached' needs tokenizer.vocab_size > 1 and tokenizer.grid > 0, "
                       f"got vocab_size={vocab_size}, grid={grid}")
    self.vocab_size = vocab_size
    self.grid = (grid, grid)
    self.tokens_per_image = grid * grid

  def encode(self, images):
    raise ValueError("tokenizer 'cached' takes pre-tokenized data: the batch must carry "
                     "'tokens' (build them with `python -m arjax.tokenize`)")

  def decode(self, tokens):
    raise ValueError("tokenizer 'cached' cannot decode tokens to pixels: name the tokenizer "
                     "checkpoint that produced them (tokenizer issue)")

  def grid_positions(self):
    r = np.arange(self.grid[0])
    return np.stack([np.repeat(r, self.grid[1]), np.tile(r, self.grid[0])], -1).astype(np.int32)


@TOKENIZERS.register("cached")
def _build_cached(config):
  return CachedTokens(vocab_size=config.tokenizer.vocab_size, grid=config.tokenizer.grid)
