"""jnp reference attention: the XLA path and the ground truth for every kernel.

Layout (that of `jax.nn.dot_product_attention`):
  q [B, Lq, H, K], k and v [B, Lk, Hkv, K] with H a multiple of Hkv (grouped-query heads).
Returns [B, Lq, H, K] in q's dtype. Rows whose keys are all hidden return zeros. Low-precision
operands stay low-precision; the contractions accumulate in float32.
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
  """Softmax(q k^T * scale + mask) v with the matmuls accumulated in `accum_dtype`.

  The operands keep their dtype (bf16 q, k, v go into the MXU/tensor cores as bf16) and
  `preferred_element_type` makes both contractions accumulate and return `accum_dtype`; the
  softmax runs in `accum_dtype`, and its probabilities are cast back to v's dtype for the second
  matmul, as flash-attention kernels do. For float32 inputs this is plain float32 attention.
  """
  check_shapes(q, k, v)
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  spec.validate(b, lq, lk)
  scale = d ** -0.5 if scale is None else scale
  g = h // hkv
  mask = spec.materialize(b, lq, lk)  # [B or 1, 1 or H, Lq, Lk]
  big_neg = jnp.finfo(accum_dtype).min
  # Operands in one dtype (the wider of q's and k's), never wider than the accumulator.
  out_dtype = q.dtype
  op_dtype = jnp.promote_types(q.dtype, k.dtype)
  if jnp.finfo(op_dtype).bits > jnp.finfo(accum_dtype).bits:
    op_dtype = accum_dtype
  q, k, v = q.astype(op_dtype), k.astype(op_dtype), v.astype(op_dtype)
  acc = dict(precision=precision, preferred_element_type=accum_dtype)
  if g == 1:  # plain multi-head: 4-D contractions, which XLA:CPU runs much faster than 5-D.
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, **acc) * scale
  else:
    qg = q.reshape(b, lq, hkv, g, d)
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, **acc)
    logits = logits.reshape(b, h, lq, lk) * scale
  logits = jnp.where(mask, logits, big_neg)
  # Masked logits sit at the dtype's minimum, so exp() sends them to 0 whenever a row has one
  # visible key; rows with none are zeroed explicitly below.
  p = jax.nn.softmax(logits, axis=-1)
  p = jnp.where(jnp.any(mask, axis=-1, keepdims=True), p, 0.0).astype(op_dtype)
  if g == 1:
    out = jnp.einsum("bhqk,bkhd->bqhd", p, v, **acc)
  else:
    out = jnp.einsum("bhgqk,bkhd->bqhgd", p.reshape(b, hkv, g, lq, lk), v, **acc)
  return out.reshape(b, lq, h, d).astype(out_dtype)


def attention_one_query(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None,
                        accum_dtype=jnp.float32):
  """`attention_reference` for one query per row (Lq = 1, a decode step) as multiply-reduces.

  Same inputs, outputs and dtype rules as `attention_reference` (q [B, 1, H, K], k and v
  [B, Lk, Hkv, K]), equal to it up to float rounding (the sums run in another order). The keys
  and values are read in their cache layout: logits[b, k, h] = sum_d q[b, h, d] k[b, k, h, d]
  and out[b, h, d] = sum_k p[b, k, h] v[b, k, h, d] are elementwise products reduced in one
  fused loop, where the einsum form makes XLA:CPU transpose the cache to [B, H, Lk, K] for a
  batched [1 x K] . [K x Lk] product at every layer and step (3x slower at 32 rows of the
  quickstart shapes, `benchmarks/decode_attention.py`).
  """
  check_shapes(q, k, v)
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  if lq != 1:
    raise ValueError(f"attention_one_query: q has {lq} queries per row; expected 1")
  spec.validate(b, lq, lk)
  scale = d ** -0.5 if scale is None else scale
  g = h // hkv
  mask = spec.materialize(b, lq, lk)[:, :, 0, :]  # [B or 1, 1 or H, Lk]
  mask = jnp.moveaxis(mask, 1, 2)                # [B or 1, Lk, 1 or H]
  big_neg = jnp.finfo(accum_dtype).min
  out_dtype = q.dtype
  op_dtype = jnp.promote_types(q.dtype, k.dtype)
  if jnp.finfo(op_dtype).bits > jnp.finfo(accum_dtype).bits:
    op_dtype = accum_dtype
  # Products of op_dtype operands are exact in accum_dtype, as in the reference's contractions.
  up = lambda x: x.astype(op_dtype).astype(accum_dtype)
  # Plain multi-head stays 4-D (XLA:CPU runs 5-D reductions several times slower).
  if g == 1:
    logits = jnp.sum(up(q) * up(k), axis=-1)                                 # [B, Lk, H]
  else:
    qg = up(q).reshape(b, 1, hkv, g, d)
    logits = jnp.sum(qg * up(k)[:, :, :, None, :], axis=-1).reshape(b, lk, h)
  logits = jnp.where(mask, logits * scale, big_neg)
  p = jax.nn.softmax(logits, axis=1)
  p = up(jnp.where(jnp.any(mask, axis=1, keepdims=True), p, 0.0))
  if g == 1:
    out = jnp.sum(p[..., None] * up(v), axis=1)                              # [B, H, K]
  else:
    out = jnp.sum(p.reshape(b, lk, hkv, g, 1) * up(v)[:, :, :, None, :], axis=1)
  return out.reshape(b, 1, h, d).astype(out_dtype)
