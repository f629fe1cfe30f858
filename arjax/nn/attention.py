"""Multi-head attention with grouped-query heads, optional QK-norm, RoPE and a KV cache.

All attention math goes through `arjax.kernels.attention` (Pallas or XLA); this module only
projects, rotates and caches. The mask is a `MaskSpec` chosen by the generation order.

KV cache: a dict {'k': [B, S, Hkv, K], 'v': [B, S, Hkv, K]} passed in and returned, so the
decode loop stays a pure function (the sampler donates it). New keys are written at
`cache_index`: a scalar shared by the batch, or int32 [B], one slot per sequence, so rows can
advance by different amounts (speculative decoding, continuous batching).

Legend: B batch, L length, S cache length, D width, H heads, Hkv key/value heads, K head dim.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from arjax import kernels
from arjax.kernels.masks import MaskSpec
from arjax.nn.layers import DenseGeneral, make_norm
from arjax.nn.rope import apply_rope

Cache = Dict[str, jax.Array]


def init_cache(batch: int, length: int, num_kv_heads: int, head_dim: int, dtype=jnp.float32
               ) -> Cache:
  shape = (batch, length, num_kv_heads, head_dim)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def write_cache(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
  """cache [B, S, ...] with new [B, T, ...] written at slots index ... index + T - 1.

  index: int32 scalar (every row) or int32 [B] (one slot per row). As with
  `lax.dynamic_update_slice`, a write that would run past S is moved back to end at S.
  """
  new = new.astype(cache.dtype)
  if index.ndim == 0:
    starts = (jnp.zeros((), jnp.int32), index) + (jnp.zeros((), jnp.int32),) * (cache.ndim - 2)
    return jax.lax.dynamic_update_slice(cache, new, starts)
  if index.shape != (cache.shape[0],):
    raise ValueError(f"cache_index has shape {index.shape}; expected a scalar or "
                     f"[{cache.shape[0]}] (one slot per row of the batch)")
  return jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice_in_dim(c, u, i, 0)
                  )(cache, new, index)


class Attention(nnx.Module):
  """x [B, L, D] -> [B, L, D]."""

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, *, rngs: nnx.Rngs,
               head_dim: Optional[int] = None, qk_norm: bool = False, dtype=None,
               param_dtype=jnp.float32, impl: str = "auto", use_bias: bool = False,
               norm: str = "rmsnorm", norm_eps: float = 1e-5):
    if dim % num_heads and head_dim is None:
      raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    k = head_dim or dim // num_heads
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, k
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias)
    self.wq = DenseGeneral((dim, num_heads, k), contract=1, axes=("embed", "heads", "kv"), **kw)
    self.wk = DenseGeneral((dim, num_kv_heads, k), contract=1, axes=("embed", "kv_heads", "kv"),
                           **kw)
    self.wv = DenseGeneral((dim, num_kv_heads, k), contract=1, axes=("embed", "kv_heads", "kv"),
                           **kw)
    self.wo = DenseGeneral((num_heads, k, dim), contract=2, axes=("heads", "kv", "embed"), **kw)
    if qk_norm:
      # QK-norm in the block's norm kind (RAR: LayerNorm over the head dim).
      nkw = dict(rngs=rngs, axes=("kv",), param_dtype=param_dtype, eps=norm_eps)
      self.q_norm = make_norm(norm, k, **nkw)
      self.k_norm = make_norm(norm, k, **nkw)
    else:
      self.q_norm = self.k_norm = None
    self.impl = impl

  def __call__(self, x, *, mask: MaskSpec, rope: Optional[Tuple[jax.Array, jax.Array]] = None,
               cache: Optional[Cache] = None, cache_index=None
               ) -> Tuple[jax.Array, Optional[Cache]]:
    q, k, v = self.wq(x), self.wk(x), self.wv(x)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if cache is not None:
      idx = jnp.asarray(0 if cache_index is None else cache_index, jnp.int32)
      k, v = write_cache(cache["k"], k, idx), write_cache(cache["v"], v, idx)
      cache = {"k": k, "v": v}
      k, v = k.astype(q.dtype), v.astype(q.dtype)
    out = kernels.attention(q, k, v, mask, impl=self.impl)
    return self.wo(out), cache
