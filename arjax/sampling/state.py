"""The one state every sampler carries through its `lax.fori_loop` / `lax.while_loop`.

Legend: B batch, N tokens per image, T the head's token shape (() or (C,)).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

PLAN_KEY = 1 << 30  # fold_in index of the plan's key: distinct from every step index.


@struct.dataclass
class SamplerState:
  """tokens [B, N, *T] of the head's dtype; known bool [B, N] (given or revealed cells);
  cache: the model's decode cache (None for recomputing samplers); key: the sampling key (step
  t draws with fold_in(key, t)); step: int32 []; position: int32 [B], cache slots written per
  row (per-sequence cache positions; the backbone today takes one scalar write index, which the
  samplers pass, so rows still advance together)."""
  tokens: jax.Array
  known: jax.Array
  cache: Any
  key: jax.Array
  step: jax.Array
  position: jax.Array

  @classmethod
  def create(cls, tokens, known, key, cache=None, position=None):
    b = tokens.shape[0]
    pos = jnp.zeros((b,), jnp.int32) if position is None else position
    return cls(tokens=tokens, known=known, cache=cache, key=key,
               step=jnp.zeros((), jnp.int32), position=pos)


def where_cells(mask, new, old):
  """mask bool [B, N], new / old [B, N, *T] -> new where mask (broadcast over T)."""
  return jnp.where(mask.reshape(mask.shape + (1,) * (old.ndim - 2)), new, old)


def scatter_cells(values, cells, n: int):
  """values [B, L, ...] for grid cells [B, L] (-1 or >= n: dropped) -> [B, N, ...] (0 elsewhere)."""
  b = values.shape[0]
  cells = jnp.where((cells >= 0) & (cells < n), cells, n)
  out = jnp.zeros((b, n) + values.shape[2:], values.dtype)
  return out.at[jnp.arange(b)[:, None], cells].set(values, mode="drop")
