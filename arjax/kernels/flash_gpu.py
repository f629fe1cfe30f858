"""FlashAttention-2 for GPUs as Pallas (Triton) kernels: forward, and backward as a custom VJP.

Layout is that of `jax.nn.dot_product_attention`:
  q [B, Lq, H, K], k and v [B, Lk, Hkv, K], H a multiple of Hkv (grouped-query heads, g = H/Hkv).
Returns [B, Lq, H, K] in q's dtype.

Kernels (Dao, "FlashAttention-2", 2023):
  forward  grid (nq, B, H): one query tile against the key tiles its mask can see, online
           softmax in float32; writes o and the log-sum-exp lse [B, H, Lq].
  dq       grid (nq, B, H): recomputes p = exp(s - lse) tile by tile, accumulates dq.
  dk, dv   grid (nk, B, Hkv): one key tile against every query tile (of all g query heads of
           its group) that can see it, so GQA needs no atomics and no [B, Lk, H, K] buffer.
Which key tiles a query tile visits, and which of them need the element mask, comes from
`blocks.tile_ranges`: fully hidden tiles (above the causal diagonal, later blocks of a
block-causal mask, past kv_length) are never loaded.

Lengths need not be multiples of the tiles: loads past the end are masked (`plgpu.load` with
`other=0`) and the element mask hides rows >= Lq and keys >= Lk, so callers never pad. Head
dims that are not powers of two are padded inside the tile the same way.

Matmuls take the input dtype (bf16 on the tensor cores) and accumulate in float32.

Legend: B batch, Lq / Lk query / key length, H query heads, Hkv key/value heads, K head dim,
Kp head dim padded to a power of two, nq / nk query / key tiles, bq / bk tile sizes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from arjax.kernels import blocks as blk
from arjax.kernels.blocks import FlashBlocks, MaskOperands, MaskPlan
from arjax.kernels.masks import as_mask_spec
from arjax.kernels.reference import attention_reference, check_shapes

SUPPORTED_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)
MAX_HEAD_DIM = 256


def reference(q, k, v, mask=None, *, scale=None):
  """The jnp ground truth for this module's kernels (float32 softmax)."""
  return attention_reference(q, k, v, as_mask_spec(mask), scale=scale)


def compiler_params(num_warps: int, num_stages: int):
  """Triton compiler params; the class was renamed across jax versions.

  Passing them also selects the Triton lowering: without them jax >= 0.7 lowers GPU kernels
  with Mosaic GPU, which these kernels are not written for.
  """
  cls = getattr(plgpu, "CompilerParams", None) or getattr(plgpu, "TritonCompilerParams")
  return cls(num_warps=num_warps, num_stages=num_stages)


def check_supported(q, k, v, *, name: str = "pallas (GPU)") -> None:
  """Raises ValueError naming the dtype or head dim this kernel cannot take."""
  check_shapes(q, k, v)
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"attention impl {name!r}: q, k, v dtypes differ ({q.dtype}, {k.dtype}, "
                     f"{v.dtype}); cast them to one of float16, bfloat16, float32")
  if q.dtype not in [jnp.dtype(d) for d in SUPPORTED_DTYPES]:
    raise ValueError(f"attention impl {name!r}: dtype {q.dtype} is not supported; use float16, "
                     "bfloat16 or float32 (or impl='xla')")
  if q.shape[-1] > MAX_HEAD_DIM:
    raise ValueError(f"attention impl {name!r}: head dim {q.shape[-1]} > {MAX_HEAD_DIM} is not "
                     "supported (the tiles would not fit in shared memory); use impl='xla'")


@dataclasses.dataclass(frozen=True)
class _Config:
  """Everything static about one call (hashable: it is a nondiff argument of the VJP)."""
  plan: MaskPlan
  scale: float
  blocks: FlashBlocks
  q_len: int
  kv_len: int
  head_dim: int
  groups: int
  interpret: bool
  debug: bool

  @property
  def head_dim_padded(self) -> int:
    return max(16, blk.next_pow2(self.head_dim))

  def has_full_tiles(self, bq: int, bk: int) -> bool:
    return self.q_len >= bq and self.kv_len >= bk


# ----------------------------------------------------------------------------- in-kernel helpers


def _dot(a, b, contract):
  """a @ b with float32 accumulation; `contract` = (a_dim, b_dim)."""
  return lax.dot_general(a, b, (((contract[0],), (contract[1],)), ((), ())),
                         preferred_element_type=jnp.float32)


def _iota(n: int, start=0):
  return start + lax.broadcasted_iota(jnp.int32, (n,), 0)


def _load(ref, row_mask=None, col_mask=None, other=0):
  """Masked load of a 1-D or 2-D tile; out-of-bounds elements read as `other`."""
  mask = None
  if row_mask is not None and col_mask is not None:
    mask = row_mask[:, None] & col_mask[None, :]
  elif row_mask is not None:
    mask = row_mask if len(ref.shape) == 1 else row_mask[:, None]
  elif col_mask is not None:
    mask = col_mask[None, :]
  if mask is None:
    return ref[...]
  return plgpu.load(ref, mask=mask, other=other)


def _store(ref, val, row_mask=None, col_mask=None):
  mask = None
  if row_mask is not None and col_mask is not None:
    mask = row_mask[:, None] & col_mask[None, :]
  elif row_mask is not None:
    mask = row_mask if len(ref.shape) == 1 else row_mask[:, None]
  elif col_mask is not None:
    mask = col_mask[None, :]
  if mask is None:
    ref[...] = val
  else:
    plgpu.store(ref, val, mask=mask)


def _head_mask(cfg: _Config):
  """[Kp] bool for the real head-dim columns, or None when K is already a power of two."""
  if cfg.head_dim_padded == cfg.head_dim:
    return None
  return _iota(cfg.head_dim_padded) < cfg.head_dim


def _three_loops(step, carry, lo, flo, fhi, hi, has_full_tiles: bool):
  """Runs step(t, carry, masked) over tiles [lo, hi), without the mask on [flo, fhi).

  When the lengths are shorter than a tile no tile is ever full, and the unmasked body is not
  even traced (its unmasked loads would not fit the array).
  """
  masked = functools.partial(step, masked=True)
  if not has_full_tiles:
    return lax.fori_loop(lo, hi, masked, carry)
  carry = lax.fori_loop(lo, flo, masked, carry)
  carry = lax.fori_loop(flo, fhi, functools.partial(step, masked=False), carry)
  return lax.fori_loop(fhi, hi, masked, carry)


def _split_mask_refs(plan: MaskPlan, refs):
  """Kernel mask refs in the order `_mask_args` passes them -> dict name -> ref."""
  names = []
  if plan.segments:
    names += ["q_seg", "kv_seg"]
  if plan.block_ids:
    names += ["q_blk", "kv_blk"]
  if plan.dense:
    names += ["dense"]
  return dict(zip(names, refs[:len(names)])), refs[len(names):]


def _mask_args(plan: MaskPlan, ops: MaskOperands):
  args = []
  if plan.segments:
    args += [ops.q_seg, ops.kv_seg]
  if plan.block_ids:
    args += [ops.q_blk, ops.kv_blk]
  if plan.dense:
    args += [ops.dense]
  return args


def _row_ids(mrefs, name, ref_slice, valid):
  """Loads a tile of per-row ids (segment / block) as [n, 1] or [1, n] inputs to tile_mask."""
  if name not in mrefs:
    return None
  return _load(ref_slice(mrefs[name]), row_mask=valid)


# ----------------------------------------------------------------------------- forward


def _fwd_kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, *refs, cfg: _Config):
  mrefs, (o_ref, lse_ref) = _split_mask_refs(cfg.plan, refs)
  bq, bk = cfg.blocks.block_q, cfg.blocks.block_k
  i, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  q_off, kv_lim, prefix = scal_ref[b, 0], scal_ref[b, 1], scal_ref[b, 2]
  lo, flo, fhi, hi = rng_ref[b, i, 0], rng_ref[b, i, 1], rng_ref[b, i, 2], rng_ref[b, i, 3]
  dmask = _head_mask(cfg)
  q_idx = _iota(bq, i * bq)
  q_in = q_idx < cfg.q_len
  q = _load(q_ref, q_in, dmask)  # [bq, Kp]
  q_seg = _row_ids(mrefs, "q_seg", lambda r: r, q_in)
  q_blk = _row_ids(mrefs, "q_blk", lambda r: r, q_in)

  def step(j, carry, masked: bool):
    acc, m, l = carry
    start = j * bk
    k_idx = _iota(bk, start)
    k_in = (k_idx < cfg.kv_len) if masked else None
    sl = pl.ds(start, bk)
    k = _load(k_ref.at[sl, :], k_in, dmask)
    v = _load(v_ref.at[sl, :], k_in, dmask)
    s = _dot(q, k, (1, 1)) * cfg.scale  # [bq, bk] float32
    if masked:
      vis = blk.tile_mask(
          cfg.plan, q_idx[:, None], k_idx[None, :], q_len=cfg.q_len, kv_lim=kv_lim,
          q_offset=q_off, prefix=prefix,
          q_seg=None if q_seg is None else q_seg[:, None],
          kv_seg=_row_ids(mrefs, "kv_seg", lambda r: r.at[sl], k_in)[None, :]
          if q_seg is not None else None,
          q_blk=None if q_blk is None else q_blk[:, None],
          kv_blk=_row_ids(mrefs, "kv_blk", lambda r: r.at[sl], k_in)[None, :]
          if q_blk is not None else None,
          dense=_load(mrefs["dense"].at[:, sl], q_in, k_in) if cfg.plan.dense else None)
      s = jnp.where(vis, s, -jnp.inf)
    m_new = jnp.maximum(m, jnp.max(s, axis=1))
    # A row with no visible key so far has m_new = -inf; shifting by 0 instead keeps
    # exp(-inf - (-inf)) = NaN out and leaves p = 0 for it.
    m_use = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
    p = jnp.exp(s - m_use[:, None])
    alpha = jnp.exp(m - m_use)
    l = l * alpha + jnp.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v, (1, 0))
    return acc, m_new, l

  carry = (jnp.zeros((bq, cfg.head_dim_padded), jnp.float32),
           jnp.full((bq,), -jnp.inf, jnp.float32), jnp.zeros((bq,), jnp.float32))
  acc, m, l = _three_loops(step, carry, lo, flo, fhi, hi, cfg.has_full_tiles(bq, bk))
  empty = l == 0.0  # every key hidden: output zeros, like the reference
  o = acc / jnp.where(empty, 1.0, l)[:, None]
  _store(o_ref, o.astype(o_ref.dtype), q_in, dmask)
  # lse = +inf makes exp(s - lse) = 0 for hidden rows in the backward pass.
  _store(lse_ref, jnp.where(empty, jnp.inf, m + jnp.log(l)), q_in)


def _mask_specs_q_major(cfg: _Config, bq: int, ops: MaskOperands, index):
  """BlockSpecs of the mask operands for grids whose tile is a query tile.

  `index(i, b, h)` -> (i, b, h) maps grid indices to (q tile, batch, query head).
  """
  specs = []
  plan = cfg.plan
  qrow = pl.BlockSpec((None, bq), lambda *g: (index(*g)[1], index(*g)[0]))
  krow = pl.BlockSpec((None, cfg.kv_len), lambda *g: (index(*g)[1], 0))
  if plan.segments:
    specs += [qrow, krow]
  if plan.block_ids:
    specs += [qrow, krow]
  if plan.dense:
    def dense_index(*g):
      i, b, h = index(*g)
      return (b if plan.dense_batch else 0, h if plan.dense_heads else 0, i, 0)
    specs.append(pl.BlockSpec((None, None, bq, cfg.kv_len), dense_index))
  return specs


def _forward(cfg: _Config, q, k, v, ops: MaskOperands, ranges):
  b, lq, h, _ = q.shape
  bq = cfg.blocks.block_q
  kp = cfg.head_dim_padded
  nq = blk.cdiv(lq, bq)
  g = cfg.groups
  full = lambda x: pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)
  in_specs = [
      full(ops.scalars), full(ranges),
      pl.BlockSpec((None, bq, None, kp), lambda i, b_, h_: (b_, i, h_, 0)),
      pl.BlockSpec((None, cfg.kv_len, None, kp), lambda i, b_, h_: (b_, 0, lax.div(h_, g), 0)),
      pl.BlockSpec((None, cfg.kv_len, None, kp), lambda i, b_, h_: (b_, 0, lax.div(h_, g), 0)),
  ] + _mask_specs_q_major(cfg, bq, ops, lambda i, b_, h_: (i, b_, h_))
  out_specs = [pl.BlockSpec((None, bq, None, kp), lambda i, b_, h_: (b_, i, h_, 0)),
               pl.BlockSpec((None, None, bq), lambda i, b_, h_: (b_, h_, i))]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
               jax.ShapeDtypeStruct((b, h, lq), jnp.float32)]
  return pl.pallas_call(
      functools.partial(_fwd_kernel, cfg=cfg),
      grid=(nq, b, h), in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=compiler_params(cfg.blocks.warps(cfg.head_dim), cfg.blocks.num_stages),
      interpret=cfg.interpret, debug=cfg.debug, name="arjax_flash_fwd",
  )(ops.scalars, ranges, q, k, v, *_mask_args(cfg.plan, ops))


# ----------------------------------------------------------------------------- backward: dq


def _dq_kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
               cfg: _Config):
  mrefs, (dq_ref,) = _split_mask_refs(cfg.plan, refs)
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  i, b, h = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  q_off, kv_lim, prefix = scal_ref[b, 0], scal_ref[b, 1], scal_ref[b, 2]
  lo, flo, fhi, hi = rng_ref[b, i, 0], rng_ref[b, i, 1], rng_ref[b, i, 2], rng_ref[b, i, 3]
  dmask = _head_mask(cfg)
  q_idx = _iota(bq, i * bq)
  q_in = q_idx < cfg.q_len
  q = _load(q_ref, q_in, dmask)
  do = _load(do_ref, q_in, dmask)
  lse = _load(lse_ref, q_in, other=jnp.inf)
  delta = _load(delta_ref, q_in)
  q_seg = _row_ids(mrefs, "q_seg", lambda r: r, q_in)
  q_blk = _row_ids(mrefs, "q_blk", lambda r: r, q_in)

  def step(j, dq, masked: bool):
    start = j * bk
    k_idx = _iota(bk, start)
    k_in = (k_idx < cfg.kv_len) if masked else None
    sl = pl.ds(start, bk)
    k = _load(k_ref.at[sl, :], k_in, dmask)
    v = _load(v_ref.at[sl, :], k_in, dmask)
    s = _dot(q, k, (1, 1)) * cfg.scale
    p = jnp.exp(s - lse[:, None])
    if masked:
      vis = blk.tile_mask(
          cfg.plan, q_idx[:, None], k_idx[None, :], q_len=cfg.q_len, kv_lim=kv_lim,
          q_offset=q_off, prefix=prefix,
          q_seg=None if q_seg is None else q_seg[:, None],
          kv_seg=_row_ids(mrefs, "kv_seg", lambda r: r.at[sl], k_in)[None, :]
          if q_seg is not None else None,
          q_blk=None if q_blk is None else q_blk[:, None],
          kv_blk=_row_ids(mrefs, "kv_blk", lambda r: r.at[sl], k_in)[None, :]
          if q_blk is not None else None,
          dense=_load(mrefs["dense"].at[:, sl], q_in, k_in) if cfg.plan.dense else None)
      p = jnp.where(vis, p, 0.0)
    dp = _dot(do, v, (1, 1))
    ds = p * (dp - delta[:, None])
    return dq + _dot(ds.astype(k.dtype), k, (1, 0))

  dq = jnp.zeros((bq, cfg.head_dim_padded), jnp.float32)
  dq = _three_loops(step, dq, lo, flo, fhi, hi, cfg.has_full_tiles(bq, bk))
  _store(dq_ref, (dq * cfg.scale).astype(dq_ref.dtype), q_in, dmask)


# ----------------------------------------------------------------------------- backward: dk, dv


def _dkv_kernel(scal_ref, rng_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
                cfg: _Config):
  mrefs, (dk_ref, dv_ref) = _split_mask_refs(cfg.plan, refs)
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  j, b = pl.program_id(0), pl.program_id(1)
  q_off, kv_lim, prefix = scal_ref[b, 0], scal_ref[b, 1], scal_ref[b, 2]
  lo, flo, fhi, hi = rng_ref[b, j, 0], rng_ref[b, j, 1], rng_ref[b, j, 2], rng_ref[b, j, 3]
  dmask = _head_mask(cfg)
  k_idx = _iota(bk, j * bk)
  k_in = k_idx < cfg.kv_len
  k = _load(k_ref, k_in, dmask)  # [bk, Kp]
  v = _load(v_ref, k_in, dmask)
  kv_seg = _row_ids(mrefs, "kv_seg", lambda r: r, k_in)
  kv_blk = _row_ids(mrefs, "kv_blk", lambda r: r, k_in)

  def step(i, carry, hh, masked: bool):
    dk, dv = carry
    start = i * bq
    q_idx = _iota(bq, start)
    q_in = (q_idx < cfg.q_len) if masked else None
    sl = pl.ds(start, bq)
    q = _load(q_ref.at[sl, hh, :], q_in, dmask)
    do = _load(do_ref.at[sl, hh, :], q_in, dmask)
    lse = _load(lse_ref.at[hh, sl], q_in, other=jnp.inf)
    delta = _load(delta_ref.at[hh, sl], q_in)
    s = _dot(q, k, (1, 1)) * cfg.scale  # [bq, bk]
    p = jnp.exp(s - lse[:, None])
    if masked:
      if cfg.plan.dense:
        # One indexer per load: the Triton lowering does not compose `.at` views.
        dref = mrefs["dense"].at[hh, sl, :] if cfg.plan.dense_heads else mrefs["dense"].at[sl, :]
        dense = _load(dref, q_in, k_in)
      else:
        dense = None
      vis = blk.tile_mask(
          cfg.plan, q_idx[:, None], k_idx[None, :], q_len=cfg.q_len, kv_lim=kv_lim,
          q_offset=q_off, prefix=prefix,
          q_seg=_row_ids(mrefs, "q_seg", lambda r: r.at[sl], q_in)[:, None]
          if kv_seg is not None else None,
          kv_seg=None if kv_seg is None else kv_seg[None, :],
          q_blk=_row_ids(mrefs, "q_blk", lambda r: r.at[sl], q_in)[:, None]
          if kv_blk is not None else None,
          kv_blk=None if kv_blk is None else kv_blk[None, :],
          dense=dense)
      p = jnp.where(vis, p, 0.0)
    dv = dv + _dot(p.astype(do.dtype), do, (0, 0))
    dp = _dot(do, v, (1, 1))
    ds = p * (dp - delta[:, None])
    dk = dk + _dot(ds.astype(q.dtype), q, (0, 0))
    return dk, dv

  def head(hh, carry):
    return _three_loops(functools.partial(step, hh=hh), carry, lo, flo, fhi, hi,
                        cfg.has_full_tiles(bq, bk))

  zeros = jnp.zeros((bk, cfg.head_dim_padded), jnp.float32)
  # The g query heads that share this key/value head all add into the same dk, dv tile.
  dk, dv = lax.fori_loop(0, cfg.groups, head, (zeros, zeros))
  _store(dk_ref, (dk * cfg.scale).astype(dk_ref.dtype), k_in, dmask)
  _store(dv_ref, dv.astype(dv_ref.dtype), k_in, dmask)


def _backward(cfg: _Config, res, do):
  q, k, v, ops, (_, q_ranges, kv_ranges), o, lse = res
  b, lq, h, _ = q.shape
  lk, hkv = k.shape[1], k.shape[2]
  g = cfg.groups
  bq, bk = cfg.blocks.block_q_bwd, cfg.blocks.block_k_bwd
  kp = cfg.head_dim_padded
  nq, nk = blk.cdiv(lq, bq), blk.cdiv(lk, bk)
  # delta_i = sum_d o_id * do_id (FlashAttention-2 eq. for dS); one cheap XLA fusion.
  delta = jnp.einsum("bqhd,bqhd->bhq", o.astype(jnp.float32), do.astype(jnp.float32))
  full = lambda x: pl.BlockSpec(x.shape, lambda *_: (0,) * x.ndim)
  params = compiler_params(cfg.blocks.warps(cfg.head_dim), cfg.blocks.num_stages)
  margs = _mask_args(cfg.plan, ops)

  qspec = pl.BlockSpec((None, bq, None, kp), lambda i, b_, h_: (b_, i, h_, 0))
  kvspec = pl.BlockSpec((None, lk, None, kp), lambda i, b_, h_: (b_, 0, lax.div(h_, g), 0))
  rowspec = pl.BlockSpec((None, None, bq), lambda i, b_, h_: (b_, h_, i))
  mspecs = _mask_specs_q_major(cfg, bq, ops, lambda i, b_, h_: (i, b_, h_))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg), grid=(nq, b, h),
      in_specs=[full(ops.scalars), full(q_ranges), qspec, kvspec, kvspec, qspec, rowspec,
                rowspec] + mspecs,
      out_specs=qspec, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=params, interpret=cfg.interpret, debug=cfg.debug, name="arjax_flash_dq",
  )(ops.scalars, q_ranges, q, k, v, do, lse, delta, *margs)

  # dk, dv: one program per (key tile, batch, kv head); it reads the g query heads of its group.
  qgspec = pl.BlockSpec((None, lq, g, kp), lambda j, b_, hk: (b_, 0, hk, 0))
  kspec = pl.BlockSpec((None, bk, None, kp), lambda j, b_, hk: (b_, j, hk, 0))
  rowgspec = pl.BlockSpec((None, g, lq), lambda j, b_, hk: (b_, hk, 0))
  mspecs = []
  plan = cfg.plan
  qrow = pl.BlockSpec((None, lq), lambda j, b_, hk: (b_, 0))
  krow = pl.BlockSpec((None, bk), lambda j, b_, hk: (b_, j))
  if plan.segments:
    mspecs += [qrow, krow]
  if plan.block_ids:
    mspecs += [qrow, krow]
  if plan.dense:
    if plan.dense_heads:
      mspecs.append(pl.BlockSpec(
          (None, g, lq, bk), lambda j, b_, hk: (b_ if plan.dense_batch else 0, hk, 0, j)))
    else:
      mspecs.append(pl.BlockSpec(
          (None, None, lq, bk), lambda j, b_, hk: (b_ if plan.dense_batch else 0, 0, 0, j)))
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg), grid=(nk, b, hkv),
      in_specs=[full(ops.scalars), full(kv_ranges), qgspec, kspec, kspec, qgspec, rowgspec,
                rowgspec] + mspecs,
      out_specs=[kspec, kspec],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
      compiler_params=params, interpret=cfg.interpret, debug=cfg.debug, name="arjax_flash_dkv",
  )(ops.scalars, kv_ranges, q, k, v, do, lse, delta, *margs)
  return dq, dk, dv


# ----------------------------------------------------------------------------- custom VJP


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg: _Config, q, k, v, ops: MaskOperands, tables):
  return _forward(cfg, q, k, v, ops, tables[0])[0]


def _flash_fwd(cfg, q, k, v, ops, tables):
  o, lse = _forward(cfg, q, k, v, ops, tables[0])
  return o, (q, k, v, ops, tables, o, lse)


def _flash_bwd(cfg, res, do):
  dq, dk, dv = _backward(cfg, res, do)
  return dq, dk, dv, None, None  # the mask operands and tile tables are integers


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q, k, v, mask=None, *, scale: Optional[float] = None,
                    blocks: Optional[FlashBlocks] = None, interpret: bool = False,
                    debug: bool = False):
  """FlashAttention forward (and backward through `jax.grad`) as Pallas Triton kernels.

  Args:
    q: [B, Lq, H, K]; k, v: [B, Lk, Hkv, K] with H % Hkv == 0; float16, bfloat16 or float32.
    mask: a MaskSpec (any kind), 'causal' / 'bidirectional', or None (bidirectional).
    scale: logits scale, default K ** -0.5.
    blocks: tile sizes; default FlashBlocks() shrunk to short sequences.
    interpret: run the kernels in the Pallas interpreter (CPU tests).
    debug: print the kernels' jaxprs.
  Returns: [B, Lq, H, K] in q's dtype; rows that see no key are zero.
  """
  check_supported(q, k, v)
  spec = as_mask_spec(mask)
  b, lq, h, d = q.shape
  lk = k.shape[1]
  plan, ops = blk.prepare_mask(spec, b, lq, lk, h)
  blocks = (blocks or FlashBlocks()).for_lengths(lq, lk)
  cfg = _Config(plan=plan, scale=float(d ** -0.5 if scale is None else scale), blocks=blocks,
                q_len=lq, kv_len=lk, head_dim=d, groups=h // k.shape[2],
                interpret=interpret, debug=debug)
  fwd_ranges, _ = blk.tile_ranges(plan, ops, lq, lk, blocks.block_q, blocks.block_k)
  bwd_q_ranges, bwd_kv_ranges = blk.tile_ranges(plan, ops, lq, lk, blocks.block_q_bwd,
                                                blocks.block_k_bwd)
  # Integer tables cannot carry gradients; stop_gradient keeps them out of the tangent trace.
  tables = jax.tree.map(lax.stop_gradient, (fwd_ranges, bwd_q_ranges, bwd_kv_ranges))
  ops = jax.tree.map(lax.stop_gradient, ops)
  return _flash(cfg, q, k, v, ops, tables)


def flops(batch: int, q_len: int, kv_len: int, heads: int, head_dim: int, *, causal: bool,
          backward: bool = False) -> float:
  """Matmul FLOPs of attention (2 matmuls fwd, 5 bwd), halved for a causal mask."""
  f = 4.0 * batch * heads * q_len * kv_len * head_dim
  if causal:
    f /= 2
  return f * (3.5 if backward else 1.0)  # fwd + bwd = 2 + 5 matmuls

