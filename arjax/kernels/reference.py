"""jnp reference attention: the XLA path and the ground truth for every kernel.

Layout (that of `jax.nn.dot_product_attention`):
  q [B, Lq, H, K], k and v [B, Lk, Hkv, K] with H a multiple of Hkv (grouped-query heads).
Returns [B, Lq, H, K] in q's dtype. Rows whose keys are all hidden return zeros.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.kernels.masks import MaskSpec


def check_shapes(q, k, v) -> None:
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"attention expects q [B,Lq,H,K], k/v [B,Lk,Hkv,K]; got q{q.shape} "
                     f"k{k.shape} v{v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"attention: k{k.shape} and v{v.shape} must have the same shape")
  if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
    raise ValueError(f"attention: batch and head dim of q{q.shape} and k{k.shape} must agree")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"attention: {q.shape[2]} query heads is not a multiple of "
                     f"{k.shape[2]} key/value heads (grouped-query attention)")


def attention_reference(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None,
                        precision=None, accum_dtype=jnp.float32):
  """Softmax(q k^T * scale + mask) v, computed densely in `accum_dtype`."""
  check_shapes(q, k, v)
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  spec.validate(b, lq, lk)
  scale = d ** -0.5 if scale is None else scale
  g = h // hkv
  qg = q.reshape(b, lq, hkv, g, d).astype(accum_dtype)
  logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(accum_dtype), precision=precision)
  logits = logits * scale
  mask = spec.materialize(b, lq, lk)  # [B, 1|H, Lq, Lk]
  if mask.shape[1] == 1:
    mask = mask[:, :, None]
  else:
    mask = mask.reshape(b, hkv, g, lq, lk)
  big_neg = jnp.finfo(accum_dtype).min
  logits = jnp.where(mask, logits, big_neg)
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - m) * mask
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  out = jnp.einsum("bhgqk,bkhd->bqhgd", p, v.astype(accum_dtype), precision=precision)
  return out.reshape(b, lq, h, d).astype(q.dtype)
