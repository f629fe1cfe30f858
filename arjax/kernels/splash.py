"""JAX's bundled splash attention (jax.experimental.pallas.ops.tpu.splash_attention) behind
arjax's MaskSpec: the attention `auto` takes on TPU until arjax's own Pallas kernels have passed
a correctness check on the device.

Splash takes per-example [H, L, K] operands and a static mask object; this module maps the
MaskSpec kinds it can express without a dense array (aligned causal, bidirectional, with or
without segment ids) onto it, vmaps over the batch, and runs grouped-query heads as one
multi-query kernel per key/value head (vmapped over Hkv). Splash does not scale q, so q is
multiplied by `scale` first. Lengths must be multiples of 128 (its tile).

Layout at the API: q [B, Lq, H, K], k and v [B, Lk, Hkv, K]. Legend: B batch, L length, H query
heads, Hkv key/value heads, g = H / Hkv, K head dim.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.kernels.masks import MaskSpec
from arjax.kernels.reference import check_shapes

TILE = 128


def unsupported_reason(q, k, v, spec: MaskSpec) -> Optional[str]:
  """None when splash can run this call, else why not (one line)."""
  check_shapes(q, k, v)
  lq, lk = q.shape[1], k.shape[1]
  if lq % TILE or lk % TILE:
    return f"lengths Lq={lq}, Lk={lk} are not multiples of {TILE}"
  aligned = isinstance(spec.q_offset, int) and spec.q_offset == 0 and lq == lk
  if spec.kind == "causal" and not aligned:
    return "causal mask with a query offset or Lq != Lk (decode)"
  if spec.kind not in ("causal", "bidirectional"):
    return f"mask kind {spec.kind!r}"
  if spec.kv_length is not None or spec.dense is not None:
    return "kv_length / dense masks"
  if not (q.dtype == k.dtype == v.dtype):
    return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
  return None


def _block(n: int) -> int:
  for b in (512, 256, TILE):
    if n % b == 0:
      return b
  raise ValueError(f"splash: length {n} is not a multiple of {TILE}")


def splash_attention(q, k, v, spec: MaskSpec, *, scale: Optional[float] = None,
                     interpret: Optional[bool] = None):
  """Splash attention for the MaskSpecs `unsupported_reason` accepts. Returns [B, Lq, H, K].

  interpret: run in the Pallas interpreter (default: when the backend is not a TPU)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  reason = unsupported_reason(q, k, v, spec)
  if reason is not None:
    raise ValueError(f"attention impl 'splash' cannot take this call: {reason}; use impl='xla'")
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  if interpret is None:
    interpret = jax.default_backend() != "tpu"
  scale = d ** -0.5 if scale is None else scale
  one = sm.CausalMask((lq, lk)) if spec.kind == "causal" else sm.FullMask((lq, lk))
  bq, bk = _block(lq), _block(lk)
  sizes = sk.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                        block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  kernel = sk.make_splash_mqa_single_device(sm.MultiHeadMask([one] * g), block_sizes=sizes,
                                            interpret=interpret)
  # [B, L, H, K] -> [B, Hkv, g, Lq, K] queries; [B, Hkv, Lk, K] keys and values.
  qh = (q * jnp.asarray(scale, q.dtype)).reshape(b, lq, hkv, g, d).transpose(0, 2, 3, 1, 4)
  kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  seg = None
  if spec.q_segment_ids is not None:
    qs = jnp.broadcast_to(spec.q_segment_ids, (b, lq)).astype(jnp.int32)
    ks = jnp.broadcast_to(spec.kv_segment_ids, (b, lk)).astype(jnp.int32)
    seg = sk.SegmentIds(q=qs, kv=ks)

  def per_example(qe, ke, ve, se):
    return jax.vmap(lambda qg, kg, vg: kernel(qg, kg, vg, segment_ids=se))(qe, ke, ve)

  out = jax.vmap(per_example)(qh, kh, vh, seg)  # [B, Hkv, g, Lq, K]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, lq, h, d).astype(q.dtype)
