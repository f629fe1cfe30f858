"""Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
Simple").

Each of d = len(levels) channels is bounded and rounded to one of L_i values; the implicit
codebook is the product grid, of size prod(levels), so there is no codebook to learn, no
commitment loss and no collapse. Channel i is bounded by

    z_i -> tanh(z_i + shift_i) * half_i - offset_i,   half_i = (L_i - 1)(1 + eps) / 2,
    offset_i = 0.5 if L_i is even else 0,             shift_i = atanh(offset_i / half_i),

rounded with a straight-through estimator, and divided by L_i // 2, so codes lie in [-1, 1]
(for even L_i the grid is asymmetric: -1 ... (L_i - 2) / L_i). The index is a mixed-radix number
with digits d_i = code_i * (L_i // 2) + L_i // 2 in 0..L_i - 1 and the first channel least
significant: index = sum_i d_i * prod_{j<i} L_j; the map index <-> code is a bijection.

When the encoder's channels differ from d, linear maps project in and out (as the paper).

Legend: B batch, h/w latent grid, C encoder channels, d = len(levels), K = prod(levels).
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.tokenizers.conv import Linear
from arjax.tokenizers.quantizers.base import QuantizerOutput, raster_positions, usage_metrics

FIELDS = {
    "levels": ((8, 5, 5, 5), "levels per channel; codebook size is their product"),
}


def round_ste(x):
  """round(x) forward, identity backward."""
  return x + jax.lax.stop_gradient(jnp.round(x) - x)


class FSQ(nnx.Module):
  """z [B, h, w, C] -> z_q [B, h, w, C], tokens int32 [B, h*w] in [0, prod(levels))."""

  FIELDS = FIELDS

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs, levels=(8, 5, 5, 5), eps: float = 1e-3):
    levels = tuple(int(l) for l in levels)
    if not levels or min(levels) < 2:
      raise ValueError(f"quantizer.levels={list(levels)}: need at least one level >= 2 each")
    self.levels = levels
    self.eps = eps
    self.dim = len(levels)
    self.in_channels = self.out_channels = in_channels
    self.vocab_size = int(np.prod(levels))
    self.basis = tuple(int(b) for b in np.cumprod((1,) + levels[:-1]))
    if in_channels != self.dim:
      self.proj_in = Linear(in_channels, self.dim, rngs=rngs, axes=("mlp", None))
      self.proj_out = Linear(self.dim, in_channels, rngs=rngs, axes=(None, "mlp"))
    else:
      self.proj_in = self.proj_out = None

  def _consts(self):
    levels = jnp.asarray(self.levels, jnp.float32)
    # (1 + eps), not (1 - eps): with L = 2 the offset 0.5 would exceed half and atanh would be
    # NaN; the widened range still rounds to exactly L values.
    half = (levels - 1.0) * (1.0 + self.eps) / 2.0
    offset = jnp.where(jnp.asarray(self.levels) % 2 == 0, 0.5, 0.0)
    shift = jnp.arctanh(offset / half)
    width = jnp.asarray([l // 2 for l in self.levels], jnp.float32)
    return half, offset, shift, width

  def bound(self, z):
    half, offset, shift, _ = self._consts()
    return jnp.tanh(z + shift) * half - offset

  def quantize(self, z):
    """[..., d] -> codes [..., d] on the grid, straight-through."""
    _, _, _, width = self._consts()
    return round_ste(self.bound(z)) / width

  def codes_to_indices(self, codes) -> jax.Array:
    """codes [..., d] -> int32 [...]."""
    _, _, _, width = self._consts()
    digits = jnp.round(codes * width + width).astype(jnp.int32)
    return jnp.sum(digits * jnp.asarray(self.basis, jnp.int32), axis=-1)

  def indices_to_codes(self, idx) -> jax.Array:
    """int [...] -> codes [..., d]."""
    _, _, _, width = self._consts()
    idx = jnp.asarray(idx, jnp.int32)[..., None]
    digits = (idx // jnp.asarray(self.basis, jnp.int32)) % jnp.asarray(self.levels, jnp.int32)
    return (digits.astype(jnp.float32) - width) / width

  def __call__(self, z, *, train: bool = False) -> QuantizerOutput:
    del train
    h = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    codes = self.quantize(h)
    idx = self.codes_to_indices(codes)
    out = codes if self.proj_out is None else self.proj_out(codes)
    return QuantizerOutput(out, idx.reshape(z.shape[0], -1), jnp.zeros((), jnp.float32),
                           usage_metrics(idx, self.vocab_size))

  def encode(self, z) -> jax.Array:
    h = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    return self.codes_to_indices(self.quantize(h)).reshape(z.shape[0], -1)

  def decode(self, tokens, grid: Tuple[int, int]) -> jax.Array:
    codes = self.indices_to_codes(tokens).reshape(tokens.shape[0], grid[0], grid[1], self.dim)
    return codes if self.proj_out is None else self.proj_out(codes)

  def num_tokens(self, grid: Tuple[int, int]) -> int:
    return grid[0] * grid[1]

  def token_positions(self, grid: Tuple[int, int]) -> np.ndarray:
    return raster_positions(*grid)
