"""Pre-tokenized data: tokens come in the batch (`batch['tokens']`), written once by a
learned tokenizer's token cache (`python -m arjax.tokenize`, arjax.tokenizers.cache). The config
states the vocabulary and grid; `tokenizer.checkpoint` names the tokenizer run that wrote the
tokens, which must agree with them and decodes sampled tokens to pixels.

Legend: B batch, N = grid*grid tokens.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from arjax.registry import read_fields
from arjax.tokenizers.base import TOKENIZERS


@dataclasses.dataclass(frozen=True)
class CachedFields:
  """`config.tokenizer` of tokenizer 'cached'."""
  vocab_size: int = 0             # codebook size of the pre-tokenized data (must be set: > 1).
  grid: int = 0                   # token grid side, grid*grid tokens (must be set: > 0).
  checkpoint: str = ""            # workdir of the tokenizer run that decodes samples ('': none).


class CachedTokens:

  def __init__(self, vocab_size: int, grid: int, checkpoint: str = ""):
    if vocab_size <= 1 or grid <= 0:
      raise ValueError(f"tokenizer 'cached' needs tokenizer.vocab_size > 1 and tokenizer.grid > 0, "
                       f"got vocab_size={vocab_size}, grid={grid}")
    self.vocab_size = vocab_size
    self.grid = (grid, grid)
    self.tokens_per_image = grid * grid
    self.checkpoint = checkpoint
    if checkpoint:  # Fails at build time on a missing run or a disagreeing vocabulary/grid.
      from arjax.tokenizers.cache import check_cached_tokenizer
      check_cached_tokenizer(checkpoint, vocab_size, grid)

  def encode(self, images):
    raise ValueError("tokenizer 'cached' takes pre-tokenized data: the batch must carry "
                     "'tokens' (build them with `python -m arjax.tokenize`)")

  def decode(self, tokens):
    """int32 [B, N] -> uint8 [B, H, W, C] through the tokenizer run `tokenizer.checkpoint`
    (restored once per process; called eagerly by the samplers)."""
    if not self.checkpoint:
      raise ValueError("tokenizer 'cached' cannot decode tokens to pixels: set "
                       "tokenizer.checkpoint to the workdir of the tokenizer that wrote them")
    from arjax.tokenizers.cache import load_tokenizer
    return jnp.asarray(load_tokenizer(self.checkpoint).decode(tokens))

  def grid_positions(self):
    r = np.arange(self.grid[0])
    return np.stack([np.repeat(r, self.grid[1]), np.tile(r, self.grid[0])], -1).astype(np.int32)


@TOKENIZERS.register("cached", fields=CachedFields)
def _build_cached(config):
  t = read_fields(CachedFields, config.tokenizer, "tokenizer 'cached' (config.tokenizer)")
  return CachedTokens(vocab_size=t.vocab_size, grid=t.grid, checkpoint=t.checkpoint)
