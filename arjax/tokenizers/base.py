"""The tokenizer interface every generator relies on.

Legend: B batch, H/W image height/width, C channels, N tokens per image, h/w token grid.
"""
from __future__ import annotations

from typing import Protocol, Tuple

import jax

from arjax.registry import Registry

TOKENIZERS: Registry = Registry("tokenizer")


class Tokenizer(Protocol):
  """Discrete tokenizer. Learned tokenizers (VQ, FSQ, ...) implement the same methods."""

  vocab_size: int
  grid: Tuple[int, int]          # (h, w) token grid; raster order is row-major over it.
  tokens_per_image: int          # N

  def encode(self, images: jax.Array) -> jax.Array:
    """uint8 [B, H, W, C] -> int32 [B, N]."""

  def decode(self, tokens: jax.Array) -> jax.Array:
    """int32 [B, N] -> uint8 [B, H', W', C]."""

  def grid_positions(self):
    """numpy int32 [N, 2] (a static constant, not a traced array): (row, col) on the token grid of each token, in raster order."""


def build_tokenizer(config):
  """Builds the tokenizer named by `config.tokenizer.name` from `config.tokenizer`."""
  return TOKENIZERS.get(config.tokenizer.name, field="tokenizer.name")(config)
