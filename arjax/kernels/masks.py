"""Attention mask specifications shared by every attention implementation.

A mask is described, not materialised: kernels evaluate `MaskSpec.allowed` on tiles, while
the XLA path calls `MaskSpec.materialize`. Coordinates: query i sits at absolute position
`q_offset + i` (the KV-cache decode case), key j at position j.

Legend: B batch, Lq query length, Lk key length.
"""
from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
from flax import struct

KINDS = ("causal", "bidirectional", "block_causal", "prefix", "sliding_window", "dense")


@struct.dataclass
class MaskSpec:
  """Which keys each query may see.

  Attributes:
    kind: one of KINDS.
    q_offset: int or int32 [B]; absolute position of query 0 (non-zero when decoding).
    kv_length: optional int32 [B]; keys at positions >= kv_length are hidden (padding or the
      unfilled part of a KV cache).
    q_segment_ids, kv_segment_ids: optional int32 [B, Lq] / [B, Lk]; a query sees only keys of
      its own segment (packing, padding).
    q_block_ids, kv_block_ids: int32 [B, Lq] / [B, Lk], for 'block_causal': a query sees a key
      iff the key's block id <= the query's block id (VAR scales, block diffusion).
    prefix_length: int or int32 [B], for 'prefix': keys before it are visible to all queries,
      later keys causally (prefix-LM).
    window: for 'sliding_window': causal, and q_pos - k_pos < window.
    dense: bool [B or 1, H or 1, Lq, Lk], for 'dense': the general fallback.
  """
  kind: str = struct.field(pytree_node=False, default="causal")
  q_offset: Union[int, jax.Array] = 0
  kv_length: Optional[jax.Array] = None
  q_segment_ids: Optional[jax.Array] = None
  kv_segment_ids: Optional[jax.Array] = None
  q_block_ids: Optional[jax.Array] = None
  kv_block_ids: Optional[jax.Array] = None
  prefix_length: Union[int, jax.Array] = 0
  window: int = struct.field(pytree_node=False, default=0)
  dense: Optional[jax.Array] = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"MaskSpec.kind={self.kind!r}; expected one of {KINDS}")
    if self.kind == "block_causal" and (self.q_block_ids is None or self.kv_block_ids is None):
      raise ValueError("MaskSpec(kind='block_causal') needs q_block_ids and kv_block_ids")
    if self.kind == "sliding_window" and not (isinstance(self.window, int) and self.window > 0):
      raise ValueError(f"MaskSpec(kind='sliding_window') needs window > 0, got {self.window!r}")
    if self.kind == "dense" and self.dense is None:
      raise ValueError("MaskSpec(kind='dense') needs the boolean array `dense`")
    if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
      raise ValueError("MaskSpec: give both q_segment_ids and kv_segment_ids, or neither")

  @property
  def is_causal_like(self) -> bool:
    """True when key tiles entirely after the last query of a tile are hidden."""
    return self.kind in ("causal", "sliding_window")

  def validate(self, batch: int, q_len: int, kv_len: int) -> None:
    """Raises ValueError naming the field whose shape disagrees with the lengths."""
    def check(name, arr, expected_last):
      if arr is None:
        return
      if arr.ndim != 2 or arr.shape[-1] != expected_last or arr.shape[0] not in (1, batch):
        raise ValueError(f"MaskSpec.{name} has shape {arr.shape}; expected "
                         f"[{batch} or 1, {expected_last}] for q_len={q_len}, kv_len={kv_len}")
    for name in ("q_offset", "kv_length", "prefix_length"):
      x = getattr(self, name)
      shape = getattr(x, "shape", ())
      if len(shape) > 1 or (len(shape) == 1 and shape[0] not in (1, batch)):
        raise ValueError(f"MaskSpec.{name} has shape {tuple(shape)}; expected a scalar or "
                         f"[{batch} or 1] for batch {batch}")
    check("q_segment_ids", self.q_segment_ids, q_len)
    check("kv_segment_ids", self.kv_segment_ids, kv_len)
    check("q_block_ids", self.q_block_ids, q_len)
    check("kv_block_ids", self.kv_block_ids, kv_len)
    if self.dense is not None:
      d = self.dense
      if d.ndim != 4 or d.shape[-2:] != (q_len, kv_len) or d.shape[0] not in (1, batch):
        raise ValueError(f"MaskSpec.dense has shape {d.shape}; expected "
                         f"[{batch} or 1, H or 1, {q_len}, {kv_len}]")
    if self.kind == "causal" and isinstance(self.q_offset, int) and self.q_offset == 0 \
        and q_len > kv_len:
      raise ValueError(f"causal mask with q_len={q_len} > kv_len={kv_len} and q_offset=0 "
                       "hides every key from the last queries; pass q_offset")

  def allowed(self, b, q_idx, k_idx):
    """Boolean visibility for query indices `q_idx` and key indices `k_idx`.

    Args:
      b: batch index (int or traced scalar) or an int32 array broadcastable with q_idx.
      q_idx: int32 [..., Lq_tile, 1] query indices (0-based within this call).
      k_idx: int32 [..., 1, Lk_tile] key indices.
    Returns: bool broadcast of q_idx and k_idx (without head axis; see `materialize` for dense).
    """
    offset = _take(self.q_offset, b)
    q_pos = q_idx + offset
    k_pos = k_idx
    if self.kind == "causal":
      ok = k_pos <= q_pos
    elif self.kind == "bidirectional":
      ok = jnp.ones(jnp.broadcast_shapes(q_pos.shape, k_pos.shape), bool)
    elif self.kind == "sliding_window":
      ok = (k_pos <= q_pos) & (q_pos - k_pos < self.window)
    elif self.kind == "prefix":
      ok = (k_pos <= q_pos) | (k_pos < _take(self.prefix_length, b))
    elif self.kind == "block_causal":
      qb = jnp.take(_row(self.q_block_ids, b), q_idx, mode="clip")
      kb = jnp.take(_row(self.kv_block_ids, b), k_idx, mode="clip")
      ok = kb <= qb
    else:  # dense: handled by materialize; here everything, the dense array is and-ed later.
      ok = jnp.ones(jnp.broadcast_shapes(q_pos.shape, k_pos.shape), bool)
    if self.kv_length is not None:
      ok = ok & (k_pos < _take(self.kv_length, b))
    if self.q_segment_ids is not None:
      qs = jnp.take(_row(self.q_segment_ids, b), q_idx, mode="clip")
      ks = jnp.take(_row(self.kv_segment_ids, b), k_idx, mode="clip")
      ok = ok & (qs == ks)
    return ok

  def materialize(self, batch: int, q_len: int, kv_len: int) -> jax.Array:
    """Dense bool mask [B, 1 or H, Lq, Lk] (XLA path and references)."""
    q_idx = jnp.arange(q_len, dtype=jnp.int32)[:, None]
    k_idx = jnp.arange(kv_len, dtype=jnp.int32)[None, :]
    if self.per_example:
      rows = jax.vmap(lambda b: self.allowed(b, q_idx, k_idx))(jnp.arange(batch))
    else:  # one [Lq, Lk] pattern for the whole batch: no batch-sized mask is built.
      rows = self.allowed(0, q_idx, k_idx)[None]
    rows = rows[:, None]
    if self.dense is not None:
      rows = rows & self.dense.astype(bool)
    return rows

  @property
  def per_example(self) -> bool:
    """Whether the visibility pattern differs between batch rows."""
    def batched(x):
      return x is not None and not isinstance(x, int) and getattr(x, "ndim", 0) > 0 \
          and x.shape[0] > 1
    return any(batched(x) for x in (self.q_offset, self.kv_length, self.q_segment_ids,
                                    self.q_block_ids, self.kv_block_ids, self.kv_segment_ids,
                                    self.prefix_length))


def _take(x, b):
  if isinstance(x, int) or (hasattr(x, "ndim") and x.ndim == 0):
    return x
  return x[b] if x.shape[0] > 1 else x[0]


def _row(x, b):
  return x[b] if x.shape[0] > 1 else x[0]


def as_mask_spec(mask: Union[str, MaskSpec, None]) -> MaskSpec:
  """Accepts a MaskSpec, a kind name ('causal', 'bidirectional'), or None (bidirectional)."""
  if mask is None:
    return MaskSpec(kind="bidirectional")
  if isinstance(mask, MaskSpec):
    return mask
  if isinstance(mask, str):
    if mask not in ("causal", "bidirectional"):
      raise ValueError(f"mask={mask!r}: only 'causal' and 'bidirectional' may be given by name; "
                       "build a MaskSpec for the other kinds")
    return MaskSpec(kind=mask)
  raise TypeError(f"mask must be a MaskSpec or a name, got {type(mask).__name__}")


def block_diffusion_visible(q_idx, k_idx, length: int, block_size: int):
  """BD3-LM's 2L x 2L visibility (Arriola et al. 2025, `block_diff_mask` of kuleshov-group/bd3lms).

  Indices 0..L-1 are the noisy sequence x_t, L..2L-1 the clean x_0. A noisy token sees the noisy
  tokens of its own block (bidirectionally) and the clean tokens of earlier blocks; a clean token
  sees the clean tokens of its own and earlier blocks (block-causal); no clean token sees a
  noisy one. q_idx int32 [..., Lq, 1], k_idx int32 [..., 1, Lk] -> bool [..., Lq, Lk].
  """
  q_noisy, k_noisy = q_idx < length, k_idx < length
  qb, kb = (q_idx % length) // block_size, (k_idx % length) // block_size
  return ((q_noisy & k_noisy & (qb == kb)) | (q_noisy & ~k_noisy & (kb < qb))
          | (~q_noisy & ~k_noisy & (kb <= qb)))


def block_diffusion_mask(length: int, block_size: int) -> MaskSpec:
  """The training mask of block diffusion over [x_t, x_0] (2L tokens) as a MaskSpec.

  It is one [1, 1, 2L, 2L] pattern shared by the batch (kind 'dense', which every attention
  implementation takes). With block_size = 1 the clean half is causal and each noisy token sees
  itself and the clean tokens before it; with block_size = L the noisy half is bidirectional and
  sees nothing of the clean half (masked diffusion).
  """
  if not (isinstance(block_size, int) and block_size >= 1 and length % block_size == 0):
    raise ValueError(f"block_size={block_size} does not divide the sequence length {length}")
  idx = jnp.arange(2 * length, dtype=jnp.int32)
  return MaskSpec(kind="dense", dense=block_diffusion_visible(idx[:, None], idx[None, :], length,
                                                              block_size)[None, None])
