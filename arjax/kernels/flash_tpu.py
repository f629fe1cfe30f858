"""FlashAttention for TPUs as Pallas (Mosaic) kernels: forward, and backward as a custom VJP.

Layout at the API is that of `jax.nn.dot_product_attention`:
  q [B, Lq, H, K], k and v [B, Lk, Hkv, K], H a multiple of Hkv (g = H / Hkv).
Inside, heads move in front of the length ([B, H, L, K]) so that a tile is a contiguous
(rows, K) slab, the layout TPU DMAs and the (8, 128) vector tiling want.

Kernels (the TPU form of FlashAttention-2: the key loop is the last, "arbitrary", grid axis
and the running max / sum / output live in VMEM scratch):
  forward  grid (B, H, nq, nk): writes o and the log-sum-exp.
  dq       grid (B, H, nq, nk).
  dk, dv   grid (B, Hkv, nk, g, nq): works on the transposed scores s^T [bk, bq] so that the
           row statistics (lse, delta) are lane vectors and no tile is transposed; the g
           query heads of a group accumulate into one dk, dv tile, so GQA needs no reduction
           afterwards.
Tile skipping: the tables from `blocks.tile_ranges` are scalar-prefetched into SMEM. Grid
steps outside a tile's visible range run no compute, and their index maps repeat the last
fetched block so the pipeline issues no DMA for them either. Steps inside the fully visible
sub-range skip the element mask.

Ragged lengths: the last tile of each axis is partial; Pallas pads its reads with unspecified
values (NaN in interpret mode), so masked tiles zero the out-of-range rows of k, v (and q, do
in the backward pass) before any matmul, and hide them in the softmax.

Hardware constraints (not checked in interpret mode): query tiles multiple of 8, key tiles and
the backward query tile multiple of 128, or equal to the whole axis.

Legend: B batch, Lq / Lk query / key length, H query heads, Hkv key/value heads, K head dim,
nq / nk query / key tiles, bq / bk tile sizes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from arjax.kernels import blocks as blk
from arjax.kernels.blocks import MaskOperands, MaskPlan, TpuBlocks
from arjax.kernels.masks import as_mask_spec
from arjax.kernels.reference import attention_reference, check_shapes

SUPPORTED_DTYPES = (jnp.bfloat16, jnp.float32)
LANES = 128  # width of the replicated row statistics in VMEM (one vreg row)


def reference(q, k, v, mask=None, *, scale=None):
  """The jnp ground truth for this module's kernels."""
  return attention_reference(q, k, v, as_mask_spec(mask), scale=scale)


def compiler_params(semantics):
  cls = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")
  return cls(dimension_semantics=semantics)


def check_supported(q, k, v, *, name: str = "pallas (TPU)") -> None:
  check_shapes(q, k, v)
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"attention impl {name!r}: q, k, v dtypes differ ({q.dtype}, {k.dtype}, "
                     f"{v.dtype})")
  if q.dtype not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
    raise ValueError(f"attention impl {name!r}: dtype {q.dtype} is not supported; use bfloat16 "
                     "or float32 (or impl='xla')")


@dataclasses.dataclass(frozen=True)
class _Config:
  plan: MaskPlan
  scale: float
  blocks: TpuBlocks
  q_len: int
  kv_len: int
  groups: int
  interpret: bool
  debug: bool


def _dot(a, b, contract):
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         preferred_element_type=jnp.float32)


def _iota(shape, dim, start=0):
  return start + lax.broadcasted_iota(jnp.int32, shape, dim)


def _zero_rows(x, valid):
  """Zeroes rows of a [n, K] tile where valid [n, 1] is False (ragged-end garbage)."""
  return jnp.where(valid, x, jnp.zeros_like(x))


def _clamp_block(t, lo, hi):
  """Block index for grid step t of a row with visible range [lo, hi): outside the range it
  repeats the nearest visited block, so the pipeline issues no new DMA."""
  return jnp.minimum(jnp.maximum(t, lo), jnp.maximum(hi - 1, lo))


def _ranges(rng_ref, row):
  base = row * 4
  return rng_ref[base], rng_ref[base + 1], rng_ref[base + 2], rng_ref[base + 3]


def _mask_names(plan: MaskPlan):
  return ((["q_seg", "kv_seg"] if plan.segments else [])
          + (["q_blk", "kv_blk"] if plan.block_ids else [])
          + (["dense"] if plan.dense else []))


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  names = _mask_names(cfg.plan)
  mrefs = dict(zip(names, refs))
  o_ref, lse_ref, m_scr, l_scr, acc_scr = refs[len(names):]
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  nq = blk.cdiv(cfg.q_len, bq)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, flo, fhi, hi = _ranges(rng_ref, b * nq + i)
  q_off, kv_lim, prefix = (scal_ref[b * blk.NUM_SCALARS + t] for t in range(3))

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full_like(m_scr, -jnp.inf)
    l_scr[...] = jnp.zeros_like(l_scr)
    acc_scr[...] = jnp.zeros_like(acc_scr)

  def compute(masked: bool):
    q, k, v = q_ref[...], k_ref[...], v_ref[...]
    if masked:
      k_rows = _iota((bk, 1), 0, j * bk) < cfg.kv_len
      k, v = _zero_rows(k, k_rows), _zero_rows(v, k_rows)
    s = _dot(q, k, (1, 1)) * cfg.scale  # [bq, bk]
    if masked:
      vis = blk.tile_mask(
          cfg.plan, _iota((bq, 1), 0, i * bq), _iota((1, bk), 1, j * bk), q_len=cfg.q_len,
          kv_lim=kv_lim, q_offset=q_off, prefix=prefix,
          q_seg=mrefs["q_seg"][...] if cfg.plan.segments else None,
          kv_seg=mrefs["kv_seg"][...] if cfg.plan.segments else None,
          q_blk=mrefs["q_blk"][...] if cfg.plan.block_ids else None,
          kv_blk=mrefs["kv_blk"][...] if cfg.plan.block_ids else None,
          dense=mrefs["dense"][...] if cfg.plan.dense else None)
      s = jnp.where(vis, s, -jnp.inf)
    m_prev = m_scr[...]  # [bq, LANES], all lanes equal
    m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
    # Rows with no visible key yet keep m = -inf; shifting them by 0 avoids inf - inf.
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    p = jnp.exp(s - m_use[:, :1])
    alpha = jnp.exp(m_prev - m_use)
    l_scr[...] = alpha * l_scr[...] + jnp.sum(p, axis=1, keepdims=True)
    m_scr[...] = m_new
    acc_scr[...] = alpha[:, :1] * acc_scr[...] + _dot(p.astype(v.dtype), v, (1, 0))

  visible = (j >= lo) & (j < hi)
  full = (j >= flo) & (j < fhi)
  pl.when(visible & full)(lambda: compute(False))
  pl.when(visible & jnp.logical_not(full))(lambda: compute(True))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    l = l_scr[...]
    empty = l == 0.0
    o_ref[...] = (acc_scr[...] / jnp.where(empty, 1.0, l)[:, :1]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m_scr[...] + jnp.log(l))


def _forward(cfg: _Config, q, k, v, ops, ranges, mops):
  """q [B, H, Lq, K], k/v [B, Hkv, Lk, K] -> o [B, H, Lq, K], lse [B, H, Lq]."""
  b, h, lq, d = q.shape
  lk = k.shape[2]
  g = cfg.groups
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  nq, nk = blk.cdiv(lq, bq), blk.cdiv(lk, bk)

  def kv_block(b_, i, j, scal, rng):
    lo, _, _, hi = _ranges(rng, b_ * nq + i)
    return _clamp_block(j, lo, hi)

  in_specs = [
      pl.BlockSpec((None, None, bq, d), lambda b_, h_, i, j, s, r: (b_, h_, i, 0)),
      pl.BlockSpec((None, None, bk, d),
                   lambda b_, h_, i, j, s, r: (b_, lax.div(h_, g), kv_block(b_, i, j, s, r), 0)),
      pl.BlockSpec((None, None, bk, d),
                   lambda b_, h_, i, j, s, r: (b_, lax.div(h_, g), kv_block(b_, i, j, s, r), 0)),
  ]
  args = []
  plan = cfg.plan
  qcol = pl.BlockSpec((None, bq, 1), lambda b_, h_, i, j, s, r: (b_, i, 0))
  krow = pl.BlockSpec((None, 1, bk), lambda b_, h_, i, j, s, r: (b_, 0, kv_block(b_, i, j, s, r)))
  if plan.segments:
    in_specs += [qcol, krow]
    args += [mops["q_seg_col"], mops["kv_seg_row"]]
  if plan.block_ids:
    in_specs += [qcol, krow]
    args += [mops["q_blk_col"], mops["kv_blk_row"]]
  if plan.dense:
    in_specs.append(pl.BlockSpec(
        (None, None, bq, bk),
        lambda b_, h_, i, j, s, r: (b_ if plan.dense_batch else 0, h_ if plan.dense_heads else 0,
                                    i, kv_block(b_, i, j, s, r))))
    args.append(ops.dense)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(b, h, nq, nk), in_specs=in_specs,
      out_specs=[pl.BlockSpec((None, None, bq, d), lambda b_, h_, i, j, s, r: (b_, h_, i, 0)),
                 pl.BlockSpec((None, None, bq, LANES), lambda b_, h_, i, j, s, r: (b_, h_, i, 0))],
      scratch_shapes=[pltpu.VMEM((bq, LANES), jnp.float32), pltpu.VMEM((bq, LANES), jnp.float32),
                      pltpu.VMEM((bq, d), jnp.float32)])
  o, lse = pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg), grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, lq, LANES), jnp.float32)],
      compiler_params=compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret, debug=cfg.debug, name="arjax_flash_tpu_fwd",
  )(ops.scalars.reshape(-1), ranges.reshape(-1), q, k, v, *args)
  # The kernel writes the statistic replicated over a vreg's lanes; keep one lane.
  return o, lse[..., 0]


# ----------------------------------------------------------------------------- backward: dq


def _dq_kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               cfg: _Config):
  names = _mask_names(cfg.plan)
  mrefs = dict(zip(names, refs))
  dq_ref, dq_scr = refs[len(names):]
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  nq = blk.cdiv(cfg.q_len, bq)
  b, i, j = pl.program_id(0), pl.program_id(2), pl.program_id(3)
  lo, flo, fhi, hi = _ranges(rng_ref, b * nq + i)
  q_off, kv_lim, prefix = (scal_ref[b * blk.NUM_SCALARS + t] for t in range(3))

  @pl.when(j == 0)
  def _init():
    dq_scr[...] = jnp.zeros_like(dq_scr)

  def compute(masked: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    lse = lse_ref[0][:, None]  # lane vector [1, bq] -> column [bq, 1]
    delta = delta_ref[0][:, None]
    if masked:
      k_rows = _iota((bk, 1), 0, j * bk) < cfg.kv_len
      k, v = _zero_rows(k, k_rows), _zero_rows(v, k_rows)
    s = _dot(q, k, (1, 1)) * cfg.scale
    p = jnp.exp(s - lse)
    dp = _dot(do, v, (1, 1))
    ds = p * (dp - delta)
    if masked:
      vis = blk.tile_mask(
          cfg.plan, _iota((bq, 1), 0, i * bq), _iota((1, bk), 1, j * bk), q_len=cfg.q_len,
          kv_lim=kv_lim, q_offset=q_off, prefix=prefix,
          q_seg=mrefs["q_seg"][...] if cfg.plan.segments else None,
          kv_seg=mrefs["kv_seg"][...] if cfg.plan.segments else None,
          q_blk=mrefs["q_blk"][...] if cfg.plan.block_ids else None,
          kv_blk=mrefs["kv_blk"][...] if cfg.plan.block_ids else None,
          dense=mrefs["dense"][...] if cfg.plan.dense else None)
      ds = jnp.where(vis, ds, 0.0)
    dq_scr[...] += _dot(ds.astype(k.dtype), k, (1, 0))

  visible = (j >= lo) & (j < hi)
  full = (j >= flo) & (j < fhi)
  pl.when(visible & full)(lambda: compute(False))
  pl.when(visible & jnp.logical_not(full))(lambda: compute(True))

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq_ref[...] = (dq_scr[...] * cfg.scale).astype(dq_ref.dtype)


# ----------------------------------------------------------------------------- backward: dk, dv


def _dkv_kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                cfg: _Config):
  names = _mask_names(cfg.plan)
  mrefs = dict(zip(names, refs))
  dk_ref, dv_ref, dk_scr, dv_scr = refs[len(names):]
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  nk = blk.cdiv(cfg.kv_len, bk)
  b, j, hh, i = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
  lo, flo, fhi, hi = _ranges(rng_ref, b * nk + j)
  q_off, kv_lim, prefix = (scal_ref[b * blk.NUM_SCALARS + t] for t in range(3))

  @pl.when((hh == 0) & (i == 0))
  def _init():
    dk_scr[...] = jnp.zeros_like(dk_scr)
    dv_scr[...] = jnp.zeros_like(dv_scr)

  def compute(masked: bool):
    q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
    lse, delta = lse_ref[...], delta_ref[...]  # [1, bq] lane vectors
    if masked:
      k_rows = _iota((bk, 1), 0, j * bk) < cfg.kv_len
      q_rows = _iota((bq, 1), 0, i * bq) < cfg.q_len
      k, v = _zero_rows(k, k_rows), _zero_rows(v, k_rows)
      q, do = _zero_rows(q, q_rows), _zero_rows(do, q_rows)
    s_t = _dot(k, q, (1, 1)) * cfg.scale  # [bk, bq]
    p_t = jnp.exp(s_t - lse)
    if masked:
      # Transposed tile: key index down the rows, query index along the lanes.
      vis_t = blk.tile_mask(
          cfg.plan, _iota((1, bq), 1, i * bq), _iota((bk, 1), 0, j * bk), q_len=cfg.q_len,
          kv_lim=kv_lim, q_offset=q_off, prefix=prefix,
          q_seg=mrefs["q_seg"][...] if cfg.plan.segments else None,
          kv_seg=mrefs["kv_seg"][...] if cfg.plan.segments else None,
          q_blk=mrefs["q_blk"][...] if cfg.plan.block_ids else None,
          kv_blk=mrefs["kv_blk"][...] if cfg.plan.block_ids else None,
          dense=mrefs["dense"][...] if cfg.plan.dense else None)
      p_t = jnp.where(vis_t, p_t, 0.0)
    dv_scr[...] += _dot(p_t.astype(do.dtype), do, (1, 0))
    dp_t = _dot(v, do, (1, 1))  # [bk, bq]
    ds_t = p_t * (dp_t - delta)
    if masked:  # lse / delta past Lq are garbage: 0 * NaN must not leak into dk
      ds_t = jnp.where(vis_t, ds_t, 0.0)
    dk_scr[...] += _dot(ds_t.astype(q.dtype), q, (1, 0))

  visible = (i >= lo) & (i < hi)
  full = (i >= flo) & (i < fhi)
  pl.when(visible & full)(lambda: compute(False))
  pl.when(visible & jnp.logical_not(full))(lambda: compute(True))

  @pl.when((hh == pl.num_programs(3) - 1) & (i == pl.num_programs(4) - 1))
  def _finish():
    dk_ref[...] = (dk_scr[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_scr[...].astype(dv_ref.dtype)


def _backward(cfg: _Config, res, do):
  q, k, v, ops, mops, (_, q_ranges, kv_ranges), o, lse = res
  b, h, lq, d = q.shape
  hkv, lk = k.shape[1], k.shape[2]
  g = cfg.groups
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  nq, nk = blk.cdiv(lq, bq), blk.cdiv(lk, bk)
  plan = cfg.plan
  delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)  # [B, H, Lq]
  # Row statistics as lane vectors [B, H, 1, Lq]: (1, bq) tiles, no 128x replication in HBM.
  lse_r, delta_r = lse[:, :, None, :], delta[:, :, None, :]

  # dq: grid (B, H, nq, nk), like the forward pass.
  def kv_block(b_, i, j, rng):
    lo, _, _, hi = _ranges(rng, b_ * nq + i)
    return _clamp_block(j, lo, hi)

  qspec = pl.BlockSpec((None, None, bq, d), lambda b_, h_, i, j, s, r: (b_, h_, i, 0))
  kvspec = pl.BlockSpec((None, None, bk, d),
                        lambda b_, h_, i, j, s, r: (b_, lax.div(h_, g), kv_block(b_, i, j, r), 0))
  rowspec = pl.BlockSpec((None, None, 1, bq), lambda b_, h_, i, j, s, r: (b_, h_, 0, i))
  in_specs, args = [qspec, kvspec, kvspec, qspec, rowspec, rowspec], []
  qcol = pl.BlockSpec((None, bq, 1), lambda b_, h_, i, j, s, r: (b_, i, 0))
  krow = pl.BlockSpec((None, 1, bk), lambda b_, h_, i, j, s, r: (b_, 0, kv_block(b_, i, j, r)))
  if plan.segments:
    in_specs += [qcol, krow]
    args += [mops["q_seg_col"], mops["kv_seg_row"]]
  if plan.block_ids:
    in_specs += [qcol, krow]
    args += [mops["q_blk_col"], mops["kv_blk_row"]]
  if plan.dense:
    in_specs.append(pl.BlockSpec(
        (None, None, bq, bk),
        lambda b_, h_, i, j, s, r: (b_ if plan.dense_batch else 0, h_ if plan.dense_heads else 0,
                                    i, kv_block(b_, i, j, r))))
    args.append(ops.dense)
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(b, h, nq, nk), in_specs=in_specs, out_specs=qspec,
          scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)]),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=compiler_params(("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret, debug=cfg.debug, name="arjax_flash_tpu_dq",
  )(ops.scalars.reshape(-1), q_ranges.reshape(-1), q, k, v, do, lse_r, delta_r, *args)

  # dk, dv: grid (B, Hkv, nk, g, nq); the last two axes reduce into one dk, dv tile.
  def q_block(b_, j, i, rng):
    lo, _, _, hi = _ranges(rng, b_ * nk + j)
    return _clamp_block(i, lo, hi)

  qspec = pl.BlockSpec((None, None, bq, d),
                       lambda b_, hk, j, hh, i, s, r: (b_, hk * g + hh, q_block(b_, j, i, r), 0))
  kvspec = pl.BlockSpec((None, None, bk, d), lambda b_, hk, j, hh, i, s, r: (b_, hk, j, 0))
  rowspec = pl.BlockSpec((None, None, 1, bq),
                         lambda b_, hk, j, hh, i, s, r: (b_, hk * g + hh, 0, q_block(b_, j, i, r)))
  in_specs, args = [qspec, kvspec, kvspec, qspec, rowspec, rowspec], []
  qrow = pl.BlockSpec((None, 1, bq), lambda b_, hk, j, hh, i, s, r: (b_, 0, q_block(b_, j, i, r)))
  kcol = pl.BlockSpec((None, bk, 1), lambda b_, hk, j, hh, i, s, r: (b_, j, 0))
  if plan.segments:
    in_specs += [qrow, kcol]
    args += [mops["q_seg_row"], mops["kv_seg_col"]]
  if plan.block_ids:
    in_specs += [qrow, kcol]
    args += [mops["q_blk_row"], mops["kv_blk_col"]]
  if plan.dense:
    in_specs.append(pl.BlockSpec(
        (None, None, bk, bq),
        lambda b_, hk, j, hh, i, s, r: (b_ if plan.dense_batch else 0,
                                        hk * g + hh if plan.dense_heads else 0,
                                        j, q_block(b_, j, i, r))))
    args.append(jnp.swapaxes(ops.dense, 2, 3))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=2, grid=(b, hkv, nk, g, nq), in_specs=in_specs,
          out_specs=[kvspec, kvspec],
          scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)]),
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=compiler_params(
          ("parallel", "parallel", "parallel", "arbitrary", "arbitrary")),
      interpret=cfg.interpret, debug=cfg.debug, name="arjax_flash_tpu_dkv",
  )(ops.scalars.reshape(-1), kv_ranges.reshape(-1), q, k, v, do, lse_r, delta_r, *args)
  return dq, dk, dv


# ----------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: _Config, q, k, v, ops, mops, tables):
  return _forward(cfg, q, k, v, ops, tables[0], mops)[0]


def _flash_fwd(cfg, q, k, v, ops, mops, tables):
  o, lse = _forward(cfg, q, k, v, ops, tables[0], mops)
  return o, (q, k, v, ops, mops, tables, o, lse)


def _flash_bwd(cfg, res, do):
  dq, dk, dv = _backward(cfg, res, do)
  return dq, dk, dv, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


def _id_layouts(plan: MaskPlan, ops: MaskOperands):
  """Per-position ids as columns [B, L, 1] and rows [B, 1, L] (both tile orientations)."""
  out = {}
  for name, x in (("q_seg", ops.q_seg), ("kv_seg", ops.kv_seg), ("q_blk", ops.q_blk),
                  ("kv_blk", ops.kv_blk)):
    if x is not None:
      out[name + "_col"] = x[:, :, None]
      out[name + "_row"] = x[:, None, :]
  return out


def flash_attention(q, k, v, mask=None, *, scale: Optional[float] = None,
                    blocks: Optional[TpuBlocks] = None, interpret: bool = False,
                    debug: bool = False):
  """FlashAttention forward (and backward through `jax.grad`) as Pallas TPU kernels.

  Args:
    q: [B, Lq, H, K]; k, v: [B, Lk, Hkv, K] with H % Hkv == 0; bfloat16 or float32.
    mask: a MaskSpec (any kind), 'causal' / 'bidirectional', or None (bidirectional).
    scale: logits scale, default K ** -0.5.
    blocks: tile sizes; default TpuBlocks() shrunk to short sequences.
    interpret: run in the Pallas TPU interpreter. On a CPU host this needs no TPU; calls
      made inside `pltpu.force_tpu_interpret_mode()` are interpreted as well.
  Returns: [B, Lq, H, K] in q's dtype; rows that see no key are zero.
  """
  check_supported(q, k, v)
  spec = as_mask_spec(mask)
  b, lq, h, d = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  plan, ops = blk.prepare_mask(spec, b, lq, lk, h)
  blocks = (blocks or TpuBlocks()).for_lengths(lq, lk)
  if interpret is True and hasattr(pltpu, "InterpretParams"):
    interpret = pltpu.InterpretParams()  # the TPU simulator (VMEM, DMAs, semaphores)
  elif interpret == "hlo":
    interpret = True  # Pallas' generic interpreter: no memory model, several times faster
  cfg = _Config(plan=plan, scale=float(d ** -0.5 if scale is None else scale), blocks=blocks,
                q_len=lq, kv_len=lk, groups=h // hkv, interpret=interpret, debug=debug)
  fwd_ranges, _ = blk.tile_ranges(plan, ops, lq, lk, blocks.block_q, blocks.block_k)
  bwd_q, bwd_kv = blk.tile_ranges(plan, ops, lq, lk, blocks.block_q_bwd, blocks.block_k_bwd)
  tables = jax.tree.map(lax.stop_gradient, (fwd_ranges, bwd_q, bwd_kv))
  ops = jax.tree.map(lax.stop_gradient, ops)
  mops = jax.tree.map(lax.stop_gradient, _id_layouts(plan, ops))
  to_bhld = lambda x: jnp.swapaxes(x, 1, 2)
  o = _flash(cfg, to_bhld(q), to_bhld(k), to_bhld(v), ops, mops, tables)
  return to_bhld(o)
