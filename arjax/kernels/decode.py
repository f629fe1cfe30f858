"""Split-K decode attention as a Pallas (Triton) kernel: a few queries against a KV cache.

When sampling, each step has Lq (1 to a few) new queries per sequence and a long cache whose
filled length differs per sequence (`MaskSpec.kv_length`). One program per (sequence, head)
would leave most of a GPU idle, so the keys are split into S chunks (Dao et al.,
"Flash-Decoding", 2023): program (b, kv head, s) attends the g * Lq query rows of its kv head
(all grouped query heads at once, so each key tile is read once per group) to chunk s,
skipping tiles past the sequence's kv_length or hidden by the mask, and writes a partial
output and log-sum-exp. A small jnp step merges the S partials with their softmax weights.

The cache is read in place (no copy, no padding); its length need not be a multiple of the
tile. Gradients, rarely needed at decode time, come from the jnp reference (custom VJP).

Layout: q [B, Lq, H, K], k and v (the cache) [B, Lk, Hkv, K], H = g * Hkv.
Returns [B, Lq, H, K] in q's dtype.

Legend: B batch, Lq queries per sequence, Lk cache length, H query heads, Hkv kv heads,
K head dim, Kp head dim padded to a power of two, R = Lq * g query rows per kv head
(Rp padded to a power of two >= 16), S splits, bk key tile.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from arjax.kernels import blocks as blk
from arjax.kernels.blocks import DecodeBlocks, MaskOperands, MaskPlan
from arjax.kernels.flash_gpu import (_dot, _iota, _load, _three_loops, check_supported,
                                     compiler_params)
from arjax.kernels.masks import as_mask_spec
from arjax.kernels.reference import attention_reference

# Above this many query rows per kv head the flash kernel's query tiling pays off instead.
MAX_DECODE_ROWS = 64


def reference(q, k, v, mask=None, *, scale=None):
  """The jnp ground truth for the decode kernel."""
  return attention_reference(q, k, v, as_mask_spec(mask), scale=scale)


@dataclasses.dataclass(frozen=True)
class _Config:
  plan: MaskPlan
  scale: float
  blocks: DecodeBlocks
  q_len: int
  kv_len: int
  head_dim: int
  groups: int
  splits: int
  interpret: bool
  debug: bool

  @property
  def head_dim_padded(self) -> int:
    return max(16, blk.next_pow2(self.head_dim))

  @property
  def rows(self) -> int:
    return self.q_len * self.groups

  @property
  def rows_padded(self) -> int:
    return max(16, blk.next_pow2(self.rows))  # Triton dots need >= 16 rows

  @property
  def tiles_per_split(self) -> int:
    return blk.cdiv(blk.cdiv(self.kv_len, self.blocks.block_k), self.splits)


def _kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  plan = cfg.plan
  names = (["q_seg", "kv_seg"] if plan.segments else []) + \
      (["q_blk", "kv_blk"] if plan.block_ids else [])
  mrefs = dict(zip(names, refs))
  o_ref, lse_ref = refs[len(names):]
  b, s = pl.program_id(0), pl.program_id(2)
  bk, rp = cfg.blocks.block_k, cfg.rows_padded
  q_off, kv_lim, prefix = scal_ref[b, 0], scal_ref[b, 1], scal_ref[b, 2]
  lo, flo, fhi, hi = rng_ref[b, 0], rng_ref[b, 1], rng_ref[b, 2], rng_ref[b, 3]
  # This split's share of the key tiles, intersected with the tiles the mask can see.
  s0 = s * cfg.tiles_per_split
  s1 = s0 + cfg.tiles_per_split
  clip = lambda t: jnp.minimum(jnp.maximum(t, s0), s1)
  lo, flo, fhi, hi = clip(lo), clip(flo), clip(fhi), clip(hi)

  dmask = None
  if cfg.head_dim_padded != cfg.head_dim:
    dmask = _iota(cfg.head_dim_padded) < cfg.head_dim
  row = _iota(rp)
  row_in = row < cfg.rows
  q_idx = lax.div(row, cfg.groups)  # row r is query r // g of query head (kv head * g + r % g)
  q = _load(q_ref, row_in, dmask)  # [Rp, Kp]
  q_seg = _load(mrefs["q_seg"], row_in) if plan.segments else None
  q_blk = _load(mrefs["q_blk"], row_in) if plan.block_ids else None

  def step(j, carry, masked: bool):
    acc, m, l = carry
    start = j * bk
    k_idx = _iota(bk, start)
    k_in = (k_idx < cfg.kv_len) if masked else None
    sl = pl.ds(start, bk)
    k = _load(k_ref.at[sl, :], k_in, dmask)
    v = _load(v_ref.at[sl, :], k_in, dmask)
    sc = _dot(q, k, (1, 1)) * cfg.scale  # [Rp, bk]
    if masked:
      vis = blk.tile_mask(
          plan, q_idx[:, None], k_idx[None, :], q_len=cfg.q_len, kv_lim=kv_lim,
          q_offset=q_off, prefix=prefix,
          q_seg=None if q_seg is None else q_seg[:, None],
          kv_seg=_load(mrefs["kv_seg"].at[sl], k_in)[None, :] if plan.segments else None,
          q_blk=None if q_blk is None else q_blk[:, None],
          kv_blk=_load(mrefs["kv_blk"].at[sl], k_in)[None, :] if plan.block_ids else None)
      sc = jnp.where(vis, sc, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(sc, axis=1))
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    p = jnp.exp(sc - m_use[:, None])
    alpha = jnp.exp(m - m_use)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v, (1, 0))
    return acc, m_new, l

  carry = (jnp.zeros((rp, cfg.head_dim_padded), jnp.float32),
           jnp.full((rp,), -jnp.inf, jnp.float32), jnp.zeros((rp,), jnp.float32))
  acc, m, l = _three_loops(step, carry, lo, flo, fhi, hi, cfg.kv_len >= bk)
  empty = l == 0.0
  o_ref[...] = acc / jnp.where(empty, 1.0, l)[:, None]
  # -inf gives an empty split zero weight in the merge.
  lse_ref[...] = jnp.where(empty, -jnp.inf, m + jnp.log(l))


def _decode(cfg: _Config, q, k, v, ops: MaskOperands, ranges):
  b, lq, h, d = q.shape
  hkv = k.shape[2]
  g, kp, rp, ns = cfg.groups, cfg.head_dim_padded, cfg.rows_padded, cfg.splits
  # [B, Lq, Hkv, g, K] -> [B, Hkv, Lq * g, K]: the few query rows that share a kv head.
  qr = q.reshape(b, lq, hkv, g, d).transpose(0, 2, 1, 3, 4).reshape(b, hkv, lq * g, d)
  rows = lambda x: jnp.repeat(x, g, axis=1)  # per-query ids -> per-row ids
  margs, mspecs = [], []
  qrow = pl.BlockSpec((None, rp), lambda b_, hk, s: (b_, 0))
  krow = pl.BlockSpec((None, cfg.kv_len), lambda b_, hk, s: (b_, 0))
  if cfg.plan.segments:
    margs += [rows(ops.q_seg), ops.kv_seg]
    mspecs += [qrow, krow]
  if cfg.plan.block_ids:
    margs += [rows(ops.q_blk), ops.kv_blk]
    mspecs += [qrow, krow]
  full = lambda x: pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)
  kvspec = pl.BlockSpec((None, cfg.kv_len, None, kp), lambda b_, hk, s: (b_, 0, hk, 0))
  o_part, lse_part = pl.pallas_call(
      functools.partial(_kernel, cfg=cfg), grid=(b, hkv, ns),
      in_specs=[full(ops.scalars), full(ranges),
                pl.BlockSpec((None, None, rp, kp), lambda b_, hk, s: (b_, hk, 0, 0)),
                kvspec, kvspec] + mspecs,
      out_specs=[pl.BlockSpec((None, None, None, rp, kp), lambda b_, hk, s: (b_, hk, s, 0, 0)),
                 pl.BlockSpec((None, None, None, rp), lambda b_, hk, s: (b_, hk, s, 0))],
      out_shape=[jax.ShapeDtypeStruct((b, hkv, ns, rp, kp), jnp.float32),
                 jax.ShapeDtypeStruct((b, hkv, ns, rp), jnp.float32)],
      compiler_params=compiler_params(cfg.blocks.num_warps, cfg.blocks.num_stages),
      interpret=cfg.interpret, debug=cfg.debug, name="arjax_decode_split_k",
  )(ops.scalars, ranges, qr, k, v, *margs)
  # Merge the splits: softmax over the splits' log-sum-exps weights their partial outputs.
  m = jnp.max(lse_part, axis=2, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.exp(lse_part - m)  # [B, Hkv, S, Rp]
  den = jnp.sum(w, axis=2)
  out = jnp.einsum("bhsr,bhsrd->bhrd", w, o_part) / jnp.where(den == 0, 1.0, den)[..., None]
  out = out[:, :, :lq * g, :d].reshape(b, hkv, lq, g, d).transpose(0, 2, 1, 3, 4)
  return out.reshape(b, lq, h, d).astype(q.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _decode_vjp(cfg: _Config, q, k, v, spec, ops, ranges):
  return _decode(cfg, q, k, v, ops, ranges)


def _decode_fwd(cfg, q, k, v, spec, ops, ranges):
  return _decode(cfg, q, k, v, ops, ranges), (q, k, v, spec)


def _decode_bwd(cfg, res, do):
  q, k, v, spec = res
  _, vjp = jax.vjp(lambda q, k, v: attention_reference(q, k, v, spec, scale=cfg.scale), q, k, v)
  return (*vjp(do), None, None, None)


_decode_vjp.defvjp(_decode_fwd, _decode_bwd)


def decode_attention(q, k, v, mask=None, *, scale: Optional[float] = None,
                     blocks: Optional[DecodeBlocks] = None, interpret: bool = False,
                     debug: bool = False):
  """Attention of a few queries per sequence to a KV cache, split over the keys.

  Args:
    q: [B, Lq, H, K] with Lq * H / Hkv <= MAX_DECODE_ROWS; k, v: [B, Lk, Hkv, K].
    mask: a MaskSpec (any kind but 'dense'); typically
      MaskSpec('causal', q_offset=cache_index, kv_length=cache_index + Lq).
    scale: logits scale, default K ** -0.5.
    blocks: DecodeBlocks (key tile, number of splits).
    interpret: run in the Pallas interpreter.
  Returns: [B, Lq, H, K] in q's dtype.
  """
  check_supported(q, k, v, name="pallas decode")
  spec = as_mask_spec(mask)
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  if lq * g > MAX_DECODE_ROWS:
    raise ValueError(f"decode_attention: {lq} queries x {g} grouped heads = {lq * g} rows per "
                     f"kv head > {MAX_DECODE_ROWS}; use the flash kernel for long queries")
  if spec.kind == "dense":
    raise ValueError("decode_attention does not take MaskSpec(kind='dense'); use impl='xla'")
  plan, ops = blk.prepare_mask(spec, b, lq, lk, h)
  blocks = blocks or DecodeBlocks()
  if blk.next_pow2(lk) < blocks.block_k:
    blocks = dataclasses.replace(blocks, block_k=max(16, blk.next_pow2(lk)))
  cfg = _Config(plan=plan, scale=float(d ** -0.5 if scale is None else scale), blocks=blocks,
                q_len=lq, kv_len=lk, head_dim=d, groups=g,
                splits=blocks.splits(b, hkv, lk), interpret=interpret, debug=debug)
  # All Lq queries form one "query tile": ranges over key tiles, int32 [B, 4].
  ranges = blk.tile_ranges(plan, ops, lq, lk, lq, blocks.block_k)[0][:, 0]
  ops = jax.tree.map(lax.stop_gradient, ops)
  return _decode_vjp(cfg, q, k, v, spec, ops, lax.stop_gradient(ranges))
