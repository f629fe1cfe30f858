"""Position encodings: RoPE-1D, RoPE-2D (LlamaGen layout), learned absolute, none (NoPE).

RoPE tables are computed from explicit position ids, so every generation order (raster,
random, parallel groups) just passes the positions of the tokens it feeds.

LlamaGen's 2D RoPE (Sun et al. 2024, `precompute_freqs_cis_2d`): channels are rotated in
adjacent pairs (2i, 2i+1); with K/2 pairs, the first K/4 pairs rotate by the row index and the
last K/4 by the column index, both halves using frequencies base^(-4j/K), j < K/4. A position id
of -1 marks a token without a grid position (the class token): LlamaGen's tables are all zeros
there (cos = sin = 0), which zeroes that token's query and key; `null_rotation='identity'`
leaves it unrotated instead.

Legend: B batch, L length, K head dim, H heads.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

NULL_ROTATIONS = ("zero", "identity")


def _inv_freq(n: int, dim: int, base: float):
  """n frequencies base^(-2j/dim), j < n."""
  return 1.0 / (base ** (jnp.arange(0, 2 * n, 2, dtype=jnp.float32)[:n] / dim))


def _null_fill(cos, sin, valid, null_rotation: str):
  if null_rotation not in NULL_ROTATIONS:
    raise ValueError(f"null_rotation={null_rotation!r}; expected one of {NULL_ROTATIONS}")
  valid = valid[..., None]
  null_cos = 0.0 if null_rotation == "zero" else 1.0
  return jnp.where(valid, cos, null_cos), jnp.where(valid, sin, 0.0)


def rope_1d(positions, head_dim: int, *, base: float = 10000.0, null_rotation: str = "zero"):
  """positions int [B, L] (-1 = no position) -> (cos, sin) float32 [B, L, K/2]."""
  if head_dim % 2:
    raise ValueError(f"RoPE-1D needs an even head dim, got {head_dim}")
  freqs = _inv_freq(head_dim // 2, head_dim, base)
  angles = positions.astype(jnp.float32)[..., None] * freqs
  return _null_fill(jnp.cos(angles), jnp.sin(angles), positions >= 0, null_rotation)


def rope_2d(rows, cols, head_dim: int, *, base: float = 10000.0, null_rotation: str = "zero"):
  """rows, cols int [B, L] (-1 = no position) -> (cos, sin) float32 [B, L, K/2] (LlamaGen)."""
  if head_dim % 4:
    raise ValueError(f"RoPE-2D needs a head dim divisible by 4, got {head_dim}")
  half = head_dim // 2
  freqs = _inv_freq(head_dim // 4, half, base)  # LlamaGen: arange(0, half, 2) / half
  ang_r = rows.astype(jnp.float32)[..., None] * freqs
  ang_c = cols.astype(jnp.float32)[..., None] * freqs
  angles = jnp.concatenate([ang_r, ang_c], axis=-1)
  return _null_fill(jnp.cos(angles), jnp.sin(angles), (rows >= 0) & (cols >= 0), null_rotation)


def apply_rope(x, cos, sin):
  """Rotates adjacent channel pairs. x [B, L, H, K], cos/sin [B, L, K/2] -> [B, L, H, K]."""
  dtype = x.dtype
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  x0, x1 = xf[..., 0], xf[..., 1]
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  out = jnp.stack([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)
  return out.reshape(x.shape).astype(dtype)
