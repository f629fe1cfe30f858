"""Cross-attention onto given keys and values, and the pre-norm block around it.

ARPG's query stack (Li et al. 2025, "Autoregressive image generation with randomized parallel
decoding"): the queries carry their own RoPE (the target's position) and read keys/values that
were projected once from another stack's output (ARPG's shared K/V), so a block has only the
query and output projections. The mask is a `MaskSpec` over (queries, keys), as in
`arjax.nn.attention`; all attention math goes through `arjax.kernels.attention`.

Legend: B batch, Lq queries, Lk keys, D width, H heads, K head dim.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from arjax import kernels
from arjax.kernels.masks import MaskSpec
from arjax.nn.layers import DenseGeneral, make_norm
from arjax.nn.rope import apply_rope


class CrossAttention(nnx.Module):
  """x [B, Lq, D], k, v [B, Lk, Hkv, K] -> [B, Lq, D]."""

  def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None,
               param_dtype=jnp.float32, impl: str = "auto", use_bias: bool = False):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by num_heads={num_heads}")
    k = dim // num_heads
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, use_bias=use_bias)
    self.wq = DenseGeneral((dim, num_heads, k), contract=1, axes=("embed", "heads", "kv"), **kw)
    self.wo = DenseGeneral((num_heads, k, dim), contract=2, axes=("heads", "kv", "embed"), **kw)
    self.impl = impl

  def __call__(self, x, k, v, *, mask: MaskSpec,
               rope: Optional[Tuple[jax.Array, jax.Array]] = None):
    q = self.wq(x)
    if rope is not None:
      q = apply_rope(q, *rope)
    out = kernels.attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, impl=self.impl)
    return self.wo(out)


class CrossBlock(nnx.Module):
  """Pre-norm cross-attention + MLP block. x [B, Lq, D], k, v [B, Lk, H, K] -> [B, Lq, D].

  `cfg` is the `TransformerConfig` of the stack (width, heads, norm, MLP, dropout).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    from arjax.nn.transformer import make_mlp  # the MLP of the self-attention blocks.
    dt = cfg.compute_dtype
    self.attn_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.attn = CrossAttention(cfg.dim, cfg.num_heads, rngs=rngs, dtype=dt,
                               impl=cfg.attention_impl, use_bias=cfg.bias)
    self.mlp_norm = make_norm(cfg.norm, cfg.dim, rngs=rngs, eps=cfg.norm_eps)
    self.mlp = make_mlp(cfg, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.resid_dropout, rngs=rngs) if cfg.resid_dropout > 0 else None

  def _drop(self, x, deterministic):
    return x if self.dropout is None else self.dropout(x, deterministic=deterministic)

  def __call__(self, x, k, v, *, mask: MaskSpec, rope=None, deterministic: bool = True):
    h = self.attn(self.attn_norm(x), k, v, mask=mask, rope=rope)
    x = x + self._drop(h, deterministic).astype(x.dtype)
    h = self.mlp(self.mlp_norm(x), deterministic=deterministic)
    return x + self._drop(h, deterministic).astype(x.dtype)
