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
  mask = spec.materialize(b, lq, lk)  # [B or 1, 1 or H, Lq, Lk]
  big_neg = jnp.finfo(accum_dtype).min
  if g == 1:  # plain multi-head: 4-D contractions, which XLA:CPU runs much faster than 5-D.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(accum_dtype), k.astype(accum_dtype),
                        precision=precision) * scale
  else:
    qg = q.reshape(b, lq, hkv, g, d).astype(accum_dtype)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k.astype(accum_dtype), precision=precision)
    logits = logits.reshape(b, h, lq, lk) * scale
  logits = jnp.where(mask, logits, big_neg)
  # Masked logits sit at the dtype's minimum, so exp() sends them to 0 whenever a row has one
  # visible key; rows with none are zeroed explicitly below.
  p = jax.nn.softmax(logits, axis=-1)
  p = jnp.where(jnp.any(mask, axis=-1, keepdims=True), p, 0.0)
  if g == 1:
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v.astype(accum_dtype), precision=precision)
  else:
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.reshape(b, hkv, g, lq, lk), v.astype(accum_dtype),
                     precision=precision)
  return out.reshape(b, lq, h, d).astype(q.dtype)
