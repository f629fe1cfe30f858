"""Tile sizes and tile-level mask logic shared by the Pallas attention kernels.

A `MaskSpec` is turned into two things a kernel can use:
  * `MaskOperands`: small integer arrays the kernel loads tile by tile (per-row scalars,
    segment / block ids, the dense fallback), plus a static `MaskPlan` saying which are present;
  * tile tables (`tile_ranges`): for every query tile the range of key tiles that can hold a
    visible key, and the sub-range whose tiles are fully visible and fully in bounds. Kernels
    loop only over the first range (so causal and block-causal masks skip hidden tiles) and
    evaluate the element mask only outside the second (diagonal tiles, ragged ends).

The tables are built from per-tile minima and maxima of positions and ids, never from an
[Lq, Lk] array (except for the dense fallback, which is [Lq, Lk] by definition).

Legend: B batch, Lq query length, Lk key length, nq / nk number of query / key tiles,
bq / bk tile sizes.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from arjax.kernels.masks import MaskSpec

# Number of int32 scalars per batch row in `MaskOperands.scalars`.
NUM_SCALARS = 3  # (q_offset, kv_limit = min(kv_length, Lk), prefix_length)


def cdiv(a: int, b: int) -> int:
  return -(-a // b)


def next_pow2(x: int) -> int:
  return 1 << max(0, (int(x) - 1).bit_length())


@dataclasses.dataclass(frozen=True)
class FlashBlocks:
  """Tile sizes of the GPU (Triton-style) flash-attention kernels.

  Every block must be a power of two (Triton's tensors are); the defaults are the usual
  FlashAttention-2 choices for an H100 (fwd 128x64, bwd 64x64). `for_lengths` shrinks a block
  to the next power of two of a short sequence so tiny inputs do not pay for empty tiles.
  """
  block_q: int = 128
  block_k: int = 64
  block_q_bwd: int = 64
  block_k_bwd: int = 64
  num_warps: Optional[int] = None  # None: 4 for head dim <= 64, else 8.
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k", "block_q_bwd", "block_k_bwd"):
      val = getattr(self, name)
      if val < 16 or val & (val - 1):
        raise ValueError(f"FlashBlocks.{name}={val}: must be a power of two >= 16 (Triton dot)")

  def for_lengths(self, q_len: int, kv_len: int) -> "FlashBlocks":
    fq, fk = max(16, next_pow2(q_len)), max(16, next_pow2(kv_len))
    return dataclasses.replace(
        self, block_q=min(self.block_q, fq), block_k=min(self.block_k, fk),
        block_q_bwd=min(self.block_q_bwd, fq), block_k_bwd=min(self.block_k_bwd, fk))

  def warps(self, head_dim: int) -> int:
    return self.num_warps or (4 if head_dim <= 64 else 8)


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
  """Tile sizes of the TPU flash-attention kernels.

  On hardware the query blocks must be multiples of 8 and the key blocks multiples of 128
  (the (8, 128) vreg tiling); interpret mode accepts any size, which the tests use.
  """
  block_q: int = 128
  block_k: int = 128
  block_q_bwd: int = 128
  block_k_bwd: int = 128

  def for_lengths(self, q_len: int, kv_len: int) -> "TpuBlocks":
    # A block equal to the whole (short) axis is always a legal TPU block shape.
    return dataclasses.replace(
        self, block_q=min(self.block_q, q_len), block_k=min(self.block_k, kv_len),
        block_q_bwd=min(self.block_q_bwd, q_len), block_k_bwd=min(self.block_k_bwd, kv_len))


@dataclasses.dataclass(frozen=True)
class DecodeBlocks:
  """Tile sizes of the split-K decode kernel.

  Attributes:
    block_k: keys per inner step (power of two).
    num_splits: how many programs share one sequence's keys; None picks enough to fill the
      GPU when B * Hkv is small (decode runs one program per (batch, kv head, split)).
  """
  block_k: int = 64
  num_splits: Optional[int] = None
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    if self.block_k < 16 or self.block_k & (self.block_k - 1):
      raise ValueError(f"DecodeBlocks.block_k={self.block_k}: must be a power of two >= 16")

  def splits(self, batch: int, kv_heads: int, kv_len: int) -> int:
    max_splits = max(1, cdiv(kv_len, self.block_k))
    if self.num_splits is not None:
      return max(1, min(self.num_splits, max_splits))
    # About 132 SMs on an H100: aim for >= 2 programs per SM.
    want = cdiv(264, max(1, batch * kv_heads))
    return max(1, min(want, max_splits, 64))


@dataclasses.dataclass(frozen=True)
class MaskPlan:
  """Static (hashable) description of which mask operands a kernel receives."""
  kind: str
  window: int = 0
  segments: bool = False
  dense_batch: bool = False  # dense mask has a batch axis > 1
  dense_heads: bool = False  # dense mask has a head axis > 1

  @property
  def block_ids(self) -> bool:
    return self.kind == "block_causal"

  @property
  def dense(self) -> bool:
    return self.kind == "dense"


class MaskOperands(NamedTuple):
  """Arrays a kernel reads to evaluate the mask (None when the plan does not use them).

  scalars: int32 [B, NUM_SCALARS]. q_seg / q_blk: int32 [B, Lq]; kv_seg / kv_blk: int32
  [B, Lk]; dense: int8 [1 or B, 1 or H, Lq, Lk].
  """
  scalars: jax.Array
  q_seg: Optional[jax.Array] = None
  kv_seg: Optional[jax.Array] = None
  q_blk: Optional[jax.Array] = None
  kv_blk: Optional[jax.Array] = None
  dense: Optional[jax.Array] = None


def _per_batch(x, batch: int, dtype=jnp.int32) -> jax.Array:
  x = jnp.asarray(x, dtype)
  if x.ndim == 0:
    return jnp.broadcast_to(x, (batch,))
  if x.ndim != 1 or x.shape[0] not in (1, batch):
    raise ValueError(f"per-batch mask scalar has shape {x.shape}; expected [] or [{batch}]")
  return jnp.broadcast_to(x, (batch,))


def prepare_mask(spec: MaskSpec, batch: int, q_len: int, kv_len: int, num_heads: int
                 ) -> tuple[MaskPlan, MaskOperands]:
  """Validates `spec` against the shapes and turns it into kernel operands."""
  spec.validate(batch, q_len, kv_len)
  if spec.dense is not None and spec.kind != "dense":
    raise ValueError(f"MaskSpec(kind={spec.kind!r}) with a `dense` array: the Pallas kernels "
                     "only read `dense` for kind='dense'")
  kv_lim = jnp.full((batch,), kv_len, jnp.int32)
  if spec.kv_length is not None:
    kv_lim = jnp.minimum(kv_lim, _per_batch(spec.kv_length, batch))
  scalars = jnp.stack([_per_batch(spec.q_offset, batch), kv_lim,
                       _per_batch(spec.prefix_length, batch)], axis=-1)
  rows = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch, x.shape[-1]))
  ops = MaskOperands(scalars=scalars)
  plan = MaskPlan(kind=spec.kind, window=int(spec.window))
  if spec.q_segment_ids is not None:
    plan = dataclasses.replace(plan, segments=True)
    ops = ops._replace(q_seg=rows(spec.q_segment_ids), kv_seg=rows(spec.kv_segment_ids))
  if spec.kind == "block_causal":
    ops = ops._replace(q_blk=rows(spec.q_block_ids), kv_blk=rows(spec.kv_block_ids))
  if spec.kind == "dense":
    d = spec.dense
    if d.shape[1] not in (1, num_heads):
      raise ValueError(f"MaskSpec.dense has {d.shape[1]} heads; expected 1 or {num_heads}")
    plan = dataclasses.replace(plan, dense_batch=d.shape[0] > 1, dense_heads=d.shape[1] > 1)
    ops = ops._replace(dense=d.astype(jnp.int8))
  return plan, ops


def tile_mask(plan: MaskPlan, q_idx, k_idx, *, q_len, kv_lim, q_offset, prefix,
              q_seg=None, kv_seg=None, q_blk=None, kv_blk=None, dense=None):
  """In-kernel visibility of a tile, the same rule as `MaskSpec.allowed`.

  Args:
    plan: static mask plan.
    q_idx: int32 [R, 1] query row indices; k_idx: int32 [1, C] key indices.
    q_len: static number of real query rows (rows beyond are tile padding).
    kv_lim, q_offset, prefix: int32 scalars of this batch row.
    q_seg, q_blk: [R, 1]; kv_seg, kv_blk: [1, C]; dense: [R, C] (nonzero = visible).
  Returns: bool [R, C].
  """
  # Out-of-range rows and keys are hidden so that garbage (or NaN) past the array end never
  # reaches the softmax or the gradient sums.
  ok = (q_idx < q_len) & (k_idx < kv_lim)
  q_pos = q_idx + q_offset
  if plan.kind == "causal":
    ok = ok & (k_idx <= q_pos)
  elif plan.kind == "sliding_window":
    ok = ok & (k_idx <= q_pos) & (q_pos - k_idx < plan.window)
  elif plan.kind == "prefix":
    ok = ok & ((k_idx <= q_pos) | (k_idx < prefix))
  elif plan.kind == "block_causal":
    ok = ok & (kv_blk <= q_blk)
  elif plan.kind == "dense":
    ok = ok & (dense != 0)
  if plan.segments:
    ok = ok & (q_seg == kv_seg)
  return ok


def _tile_minmax(x: jax.Array, block: int):
  """Per-tile min and max of int32 [B, L] -> ([B, n], [B, n]); the ragged end is edge-padded."""
  n = cdiv(x.shape[-1], block)
  x = jnp.pad(x, ((0, 0), (0, n * block - x.shape[-1])), mode="edge").reshape(x.shape[0], n, block)
  return x.min(-1), x.max(-1)


def tile_visibility(plan: MaskPlan, ops: MaskOperands, q_len: int, kv_len: int, bq: int, bk: int
                    ) -> tuple[jax.Array, jax.Array]:
  """Which (query tile, key tile) pairs may hold a visible key, and which are fully visible.

  Returns:
    any_: bool [B, nq, nk]; False only when the tile is certainly fully hidden (skippable).
    all_: bool [B, nq, nk]; True only when every element is visible and in bounds (the kernel
      then skips the element mask). Both are conservative in the safe direction.
  """
  nq, nk = cdiv(q_len, bq), cdiv(kv_len, bk)
  qs = jnp.arange(nq, dtype=jnp.int32) * bq
  qe = jnp.minimum(qs + bq, q_len) - 1
  ks = jnp.arange(nk, dtype=jnp.int32) * bk
  ke = jnp.minimum(ks + bk, kv_len) - 1
  off = ops.scalars[:, 0, None, None]
  kv_lim = ops.scalars[:, 1, None, None]
  prefix = ops.scalars[:, 2, None, None]
  qmin, qmax = qs[None, :, None] + off, qe[None, :, None] + off  # [B, nq, 1] positions
  kmin, kmax = ks[None, None, :], ke[None, None, :]  # [1, 1, nk]
  if plan.kind == "causal":
    any_, all_ = kmin <= qmax, kmax <= qmin
  elif plan.kind == "sliding_window":
    w = plan.window
    any_ = (kmin <= qmax) & (qmin - kmax < w)
    all_ = (kmax <= qmin) & (qmax - kmin < w)
  elif plan.kind == "prefix":
    any_ = (kmin <= qmax) | (kmin < prefix)
    all_ = (kmax <= qmin) | (kmax < prefix)
  elif plan.kind == "block_causal":
    qb_min, qb_max = _tile_minmax(ops.q_blk, bq)
    kb_min, kb_max = _tile_minmax(ops.kv_blk, bk)
    any_ = kb_min[:, None, :] <= qb_max[:, :, None]
    all_ = kb_max[:, None, :] <= qb_min[:, :, None]
  elif plan.kind == "dense":
    d = ops.dense.astype(bool)
    pad = ((0, 0), (0, nq * bq - q_len), (0, nk * bk - kv_len))
    tiles = lambda x, fill: jnp.pad(x, pad, constant_values=fill).reshape(
        x.shape[0], nq, bq, nk, bk)
    any_ = tiles(d.any(1), False).any((2, 4))
    all_ = tiles(d.all(1), True).all((2, 4))
  else:  # bidirectional
    any_ = all_ = jnp.ones((1, 1, 1), bool)
  any_ = any_ & (kmin < kv_lim)
  all_ = all_ & (kmax < kv_lim)
  if plan.segments:
    qs_min, qs_max = _tile_minmax(ops.q_seg, bq)
    ks_min, ks_max = _tile_minmax(ops.kv_seg, bk)
    any_ = any_ & (ks_min[:, None, :] <= qs_max[:, :, None]) \
        & (qs_min[:, :, None] <= ks_max[:, None, :])
    all_ = all_ & (qs_min == qs_max)[:, :, None] & (ks_min == ks_max)[:, None, :] \
        & (qs_min[:, :, None] == ks_min[:, None, :])
  batch = ops.scalars.shape[0]
  full_q = (qs + bq <= q_len)[None, :, None]
  full_k = (ks + bk <= kv_len)[None, None, :]
  any_ = jnp.broadcast_to(any_, (batch, nq, nk))
  all_ = jnp.broadcast_to(all_ & full_q & full_k, (batch, nq, nk)) & any_
  return any_, all_


def ranges_from_visibility(any_: jax.Array, all_: jax.Array) -> jax.Array:
  """Per row of tiles: int32 [..., 4] = (lo, full_lo, full_hi, hi) over the last axis.

  Tiles in [lo, hi) are visited; [full_lo, full_hi) is a run of fully visible tiles visited
  without the element mask; lo <= full_lo <= full_hi <= hi. Rows with nothing visible get
  lo = hi, so the kernel writes zeros for them.
  """
  n = any_.shape[-1]
  idx = jnp.arange(n, dtype=jnp.int32)
  hi = jnp.max(jnp.where(any_, idx + 1, 0), axis=-1)
  lo = jnp.minimum(jnp.min(jnp.where(any_, idx, n), axis=-1), hi)
  flo = jnp.min(jnp.where(all_, idx, n), axis=-1)
  fhi = jnp.min(jnp.where((idx >= flo[..., None]) & ~all_, idx, n), axis=-1)
  none = flo >= n
  flo = jnp.where(none, hi, flo)
  fhi = jnp.where(none, hi, fhi)
  return jnp.stack([lo, flo, fhi, hi], axis=-1).astype(jnp.int32)


def tile_ranges(plan: MaskPlan, ops: MaskOperands, q_len: int, kv_len: int, bq: int, bk: int
                ) -> tuple[jax.Array, jax.Array]:
  """(q_ranges int32 [B, nq, 4] over key tiles, kv_ranges int32 [B, nk, 4] over query tiles)."""
  any_, all_ = tile_visibility(plan, ops, q_len, kv_len, bq, bk)
  return (ranges_from_visibility(any_, all_),
          ranges_from_visibility(jnp.swapaxes(any_, 1, 2), jnp.swapaxes(all_, 1, 2)))
