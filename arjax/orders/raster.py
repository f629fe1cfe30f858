"""Raster order: next-token prediction in row-major token order (LlamaGen, Sun et al. 2024).

Training sequence: [prefix (class token), x_0 ... x_{N-2}] predicts x_0 ... x_{N-1} under a
causal mask; every image token carries the 2D position of its own grid cell, the class token
position -1. Sampling: one token per step, N steps.

Legend: B batch, N tokens, P prefix length.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from arjax.kernels.masks import MaskSpec
from arjax.orders.base import ORDERS


class RasterOrder:
  mask_kind = "causal"

  def __init__(self, grid_positions: np.ndarray, prefix_len: int = 1):
    # numpy, not jax: the order is static model structure and must not hold traced values.
    self._grid_positions = np.asarray(grid_positions, np.int32)  # [N, 2]
    self.prefix_len = prefix_len
    self.num_tokens = self._grid_positions.shape[0]

  @property
  def grid_positions(self):
    return jnp.asarray(self._grid_positions)

  def input_positions(self, batch: int):
    """int32 [B, P + N - 1, 2]: positions of the training inputs (prefix at -1)."""
    prefix = -jnp.ones((self.prefix_len, 2), jnp.int32)
    pos = jnp.concatenate([prefix, self.grid_positions[:-1]], axis=0)
    return jnp.broadcast_to(pos, (batch,) + pos.shape)

  def train_mask(self) -> MaskSpec:
    return MaskSpec(kind="causal")

  def decode_mask(self, cache_index, num_new: int) -> MaskSpec:
    """Mask for `num_new` queries written at `cache_index` of a KV cache."""
    return MaskSpec(kind="causal", q_offset=cache_index, kv_length=cache_index + num_new)

  def num_steps(self) -> int:
    return self.num_tokens


@ORDERS.register("raster")
def _build_raster(config, tokenizer):
  return RasterOrder(tokenizer.grid_positions(), prefix_len=1)
