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
from arjax.orders.base import (ORDERS, NoFields, Order, identity_perm, order_fields, perm_layout,
                               plan_from_cumulative)


class RasterOrder(Order):
  name = "raster"
  mask_kind = "causal"

  def __init__(self, grid_positions: np.ndarray, prefix_len: int = 1, grid=None):
    # numpy, not jax: the order is static model structure and must not hold traced values.
    grid_positions = np.asarray(grid_positions, np.int32)  # [N, 2]
    n = grid_positions.shape[0]
    if grid is None:
      grid = (int(grid_positions[:, 0].max()) + 1, int(grid_positions[:, 1].max()) + 1)
    super().__init__(n, grid_positions, grid)
    self.prefix_len = prefix_len

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

  # -- the order protocol (arjax.orders.base) ------------------------------------------------
  def train_layout(self, rng, batch: int, step=None, train: bool = True):
    return perm_layout(identity_perm(batch, self.num_tokens), MaskSpec(kind="causal"))

  def sample_plan(self, rng, batch: int, known=None):
    return plan_from_cumulative(identity_perm(batch, self.num_tokens),
                                range(1, self.num_tokens + 1), known)

  def sample_layout(self, plan, known):
    return perm_layout(plan.perm, MaskSpec(kind="causal"))


@ORDERS.register("raster", fields=NoFields)
def _build_raster(config, tokenizer):
  order_fields(NoFields, config, "raster")
  return RasterOrder(tokenizer.grid_positions(), prefix_len=1)
