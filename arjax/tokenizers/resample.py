"""PyTorch-compatible image resampling: adaptive average pooling ("area") and bicubic.

VAR (Tian et al. 2024, "Visual Autoregressive Modeling") resizes its residual feature maps with
PyTorch's `F.interpolate(mode='area')` (down) and `F.interpolate(mode='bicubic')` (up). Neither
matches `jax.image.resize`: PyTorch's bicubic is Keys' kernel with a = -0.75 (JAX uses -0.5)
and reads out-of-range taps from the clamped edge pixel (JAX drops and renormalises them), and
PyTorch's area mode is adaptive average pooling, whose cells overlap when the output size does
not divide the input size. A port that must reproduce VAR's tokens needs both exactly, so both
are written here as separable [out, in] weight matrices built once in numpy float64.

  * area: output cell i averages input rows floor(i*H/h) ... ceil((i+1)*H/h) - 1.
  * bicubic (align_corners=False): output i samples source s = (i + 0.5) * H/h - 0.5 (not
    clamped, unlike PyTorch's bilinear), with taps floor(s)-1 ... floor(s)+2 clamped to
    [0, H-1] and weights W(t+1), W(t), W(1-t), W(2-t), t = s - floor(s), where
    W(x) = (a+2)|x|^3 - (a+3)|x|^2 + 1 for |x| <= 1 and a|x|^3 - 5a|x|^2 + 8a|x| - 4a for
    1 < |x| < 2.

Both are linear maps, so gradients flow through them (VAR trains φ through the upsampling).

Legend: B batch, H/W input height/width, h/w output height/width, C channels.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PYTORCH_CUBIC_A = -0.75


def _cubic_near(x: float, a: float) -> float:
  """Keys' kernel for |x| <= 1."""
  return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0


def _cubic_far(x: float, a: float) -> float:
  """Keys' kernel for 1 < |x| < 2."""
  return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a


@functools.lru_cache(maxsize=None)
def area_matrix(in_size: int, out_size: int) -> np.ndarray:
  """float64 [out_size, in_size]: PyTorch adaptive average pooling along one axis."""
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f"area resize needs positive sizes, got {in_size} -> {out_size}")
  m = np.zeros((out_size, in_size))
  for i in range(out_size):
    # Integer arithmetic, as PyTorch's start_index/end_index, so no rounding can shift a cell.
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)  # ceil((i+1)*in/out)
    m[i, start:end] = 1.0 / (end - start)
  return m


@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int, a: float = PYTORCH_CUBIC_A) -> np.ndarray:
  """float64 [out_size, in_size]: PyTorch bicubic (align_corners=False) along one axis."""
  if in_size <= 0 or out_size <= 0:
    raise ValueError(f"bicubic resize needs positive sizes, got {in_size} -> {out_size}")
  scale = in_size / out_size
  m = np.zeros((out_size, in_size))
  for i in range(out_size):
    src = (i + 0.5) * scale - 0.5
    base = math.floor(src)
    t = src - base
    weights = (_cubic_far(t + 1.0, a), _cubic_near(t, a), _cubic_near(1.0 - t, a),
               _cubic_far(2.0 - t, a))
    for k, w in enumerate(weights):
      # Edge clamping: taps outside the image read the border pixel, so their weight piles up
      # there (the row still sums to one).
      m[i, min(max(base - 1 + k, 0), in_size - 1)] += w
  return m


def _apply(x: jax.Array, mh: np.ndarray, mw: np.ndarray) -> jax.Array:
  if x.ndim != 4:
    raise ValueError(f"resize expects [B, H, W, C], got shape {tuple(x.shape)}")
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  mh = jnp.asarray(mh, dtype)
  mw = jnp.asarray(mw, dtype)
  # HIGHEST: TPUs would otherwise multiply in bfloat16, and parity with PyTorch is the point.
  return jnp.einsum("ih,bhwc,jw->bijc", mh, x.astype(dtype), mw,
                    precision=jax.lax.Precision.HIGHEST)


def _size(size) -> Sequence[int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def area_resize(x: jax.Array, size) -> jax.Array:
  """[B, H, W, C] -> [B, h, w, C] as `F.interpolate(x, size, mode='area')`."""
  h, w = _size(size)
  return _apply(x, area_matrix(x.shape[1], h), area_matrix(x.shape[2], w))


def bicubic_resize(x: jax.Array, size, a: float = PYTORCH_CUBIC_A) -> jax.Array:
  """[B, H, W, C] -> [B, h, w, C] as `F.interpolate(x, size, mode='bicubic')` (a = -0.75)."""
  h, w = _size(size)
  return _apply(x, bicubic_matrix(x.shape[1], h, a), bicubic_matrix(x.shape[2], w, a))
