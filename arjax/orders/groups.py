"""Parallel-group orders: LPD, PAR and NAR.

'lpd' (LPD, Zhang et al. 2025): content slots [class, x_pi0, ...] followed by one query per
target (a learned [MASK] embedding at the target's position). Queries of group k see each
other and the content of groups < k; content is causal by group. Group sizes come from
`order.schedule` / `order.group_sizes` (LPD's 20-step table for 256 tokens). The locality-aware
order (arjax.orders.locality) picks the sampling order: each sample takes one of
`order.locality_orders` (default 64) precomputed orders; 0 samples a uniformly random order.
Training uses uniformly random orders, as LPD does.

'par' (PAR, Wang et al. 2025): the grid is split into n = `order.regions` regions; first the
first token of every region, one per step, then groups of n tokens sharing an in-region
position. Sequence [class, initial n tokens, n-1 transition queries, groups 2..G-1]; causal,
with full visibility inside a group (block-causal). Steps: n + N/n - 1. The transition slots are
SRC_QUERY slots, so they all carry the model's one learned query vector (each at its target's
position), where PAR learns n - 1 distinct transition tokens.

'nar' (NAR, He et al. 2025): next-neighbour prediction. Slots [class, x_0 ... x_(N-1)] in
raster order; cell (h, w) sees every cell with h' + w' <= h + w (block-causal on the
anti-diagonal); step c generates the cells with h + w = c, 2H - 1 steps. The NAR model's two
heads (right / lower neighbour) read this layout (arjax.models.nar).

Legend: B batch, N tokens, G groups, L slots.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from arjax.kernels.masks import MaskSpec
from arjax.orders.base import (ORDERS, SRC_CLASS, SRC_QUERY, Layout, NoFields, Order,
                               identity_perm, order_fields, plan_from_cumulative, random_perm)
from arjax.orders.random import GroupFields, _PermutationOrder, _kw
from arjax.orders import locality, schedules


class LpdOrder(_PermutationOrder):
  name = "lpd"
  mask_kind = "block"

  def __init__(self, num_tokens, grid_positions, grid, *, locality_orders: int = 0,
               locality_seed: int = 0, **kw):
    super().__init__(num_tokens, grid_positions, grid, **kw)
    if locality_orders < 0:
      raise ValueError(f"order.locality_orders={locality_orders}; expected >= 0 (0: uniformly "
                       "random orders)")
    cum = np.asarray([0] + list(self.cumulative))
    sizes = np.diff(cum)
    # [M, N] locality-aware sampling orders, drawn once on the host (see arjax.orders.locality).
    self._bank = (locality.locality_orders(self.grid, sizes, locality_orders, locality_seed)
                  if locality_orders > 0 else None)
    n, last = num_tokens, int(sizes[-1])
    rank_group = np.searchsorted(cum[1:], np.arange(n), side="right")      # [N]
    content_ids = np.concatenate([[0], 2 * (rank_group[:n - last] + 1)])   # class: group 0
    query_ids = 2 * rank_group + 1
    ids = np.concatenate([content_ids, query_ids])
    is_content = np.arange(ids.size) < content_ids.size
    same = ids[:, None] == ids[None, :]
    earlier = (ids[None, :] < ids[:, None]) & is_content[None, :]
    self._dense = (same | earlier)[None, None]                            # [1, 1, L, L]
    self.num_content = content_ids.size

  def layout_for(self, perm) -> Layout:
    b, n = perm.shape
    c = self.num_content - 1
    cls = jnp.full((b, 1), SRC_CLASS, jnp.int32)
    none = jnp.full((b, 1), -1, jnp.int32)
    src = jnp.concatenate([cls, perm[:, :c], jnp.full((b, n), SRC_QUERY, jnp.int32)], 1)
    pos = jnp.concatenate([none, perm[:, :c], perm], 1)
    tgt = jnp.concatenate([none, jnp.full((b, c), -1, jnp.int32), perm], 1)
    return Layout(src=src, pos=pos, tgt=tgt,
                  mask=MaskSpec(kind="dense", dense=jnp.asarray(self._dense)), perm=perm)

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    return self.layout_for(random_perm(rng, batch, self.num_tokens))

  def sample_plan(self, rng, batch: int, known=None):
    if self._bank is None:
      return super().sample_plan(rng, batch, known)
    bank = jnp.asarray(self._bank)
    perm = bank[jax.random.randint(rng, (batch,), 0, bank.shape[0])]          # [B, N]
    if known is not None:  # inpainting: known cells first, the rest keep the bank's order.
      ranks = jnp.arange(self.num_tokens)[None] - 2 * self.num_tokens * jnp.take_along_axis(
          known, perm, axis=1).astype(jnp.int32)
      perm = jnp.take_along_axis(perm, jnp.argsort(ranks, axis=1), axis=1)
    return plan_from_cumulative(perm.astype(jnp.int32), self.cumulative, known)


def par_permutation(grid, regions: int) -> np.ndarray:
  """PAR's generation order: in-region position major, region (raster) minor."""
  h, w = grid
  side = int(round(regions ** 0.5))
  if side * side != regions or h % side or w % side:
    raise ValueError(f"order.regions={regions} must be a square whose side divides the grid "
                     f"{h}x{w}")
  rh, rw = h // side, w // side
  out = []
  for i in range(rh):
    for j in range(rw):
      for a in range(side):
        for b in range(side):
          out.append((a * rh + i) * w + (b * rw + j))
  return np.asarray(out, np.int32)


class ParOrder(Order):
  name = "par"
  mask_kind = "block"

  def __init__(self, num_tokens, grid_positions, grid, regions: int = 4):
    super().__init__(num_tokens, grid_positions, grid)
    if regions < 1:
      raise ValueError(f"order.regions={regions}; expected a square >= 1")
    n, g = regions, num_tokens // regions
    if g < 2:
      raise ValueError(f"order.regions={regions} leaves fewer than 2 groups of {num_tokens}")
    self.regions = n
    p = par_permutation(grid, regions)
    # Slots: 0 class; 1..n-1 initial tokens 0..n-2; n: initial token n-1; n+1..2n-1 transition
    # queries S_1..S_(n-1); then groups 2..G-1 (each predicting the next group).
    src = [SRC_CLASS] + list(p[:n]) + [SRC_QUERY] * (n - 1) + list(p[n:(g - 1) * n])
    tgt = list(p[:n]) + list(p[n:2 * n]) + list(p[2 * n:])
    pos = [-1] + list(p[:n]) + list(p[n + 1:2 * n]) + list(p[n:(g - 1) * n])
    block = [0] + list(range(1, n)) + [n] * n + [n + 1 + k for k in range(g - 2) for _ in
                                                   range(n)]
    self._src, self._tgt, self._pos = (np.asarray(x, np.int32) for x in (src, tgt, pos))
    self._block = np.asarray(block, np.int32)
    self._perm = p
    self.cumulative = list(range(1, n + 1)) + [n * k for k in range(2, g + 1)]

  def num_steps(self) -> int:
    return len(self.cumulative)

  def _layout(self, batch: int) -> Layout:
    bc = lambda x: jnp.broadcast_to(jnp.asarray(x), (batch,) + x.shape)
    block = jnp.asarray(self._block)[None]
    return Layout(src=bc(self._src), pos=bc(self._pos), tgt=bc(self._tgt),
                  mask=MaskSpec(kind="block_causal", q_block_ids=block, kv_block_ids=block),
                  perm=bc(self._perm))

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    return self._layout(batch)

  def sample_plan(self, rng, batch: int, known=None):
    perm = jnp.broadcast_to(jnp.asarray(self._perm), (batch, self.num_tokens))
    return plan_from_cumulative(perm, self.cumulative, known)

  def sample_layout(self, plan, known):
    return self._layout(plan.perm.shape[0]).hide_unknown(known)


class NarOrder(Order):
  name = "nar"
  mask_kind = "block"
  models = ("nar",)  # Layout.tgt is empty: the right/below heads of arjax.models.nar predict.

  def __init__(self, num_tokens, grid_positions, grid):
    super().__init__(num_tokens, grid_positions, grid)
    h, w = grid
    if h * w != num_tokens:
      raise ValueError(f"order 'nar' needs one token per grid cell; grid {grid} has {h * w} "
                       f"cells for {num_tokens} tokens")
    diag = self._grid_positions.sum(-1)                                   # [N] h + w
    self._block = np.concatenate([[0], diag + 1]).astype(np.int32)
    self._perm = np.lexsort((self._grid_positions[:, 0], diag)).astype(np.int32)
    self.diag = diag.astype(np.int32)

  def num_steps(self) -> int:
    return self.grid[0] + self.grid[1] - 1

  def _layout(self, batch: int) -> Layout:
    n = self.num_tokens
    cells = jnp.arange(n, dtype=jnp.int32)
    src = jnp.concatenate([jnp.asarray([SRC_CLASS], jnp.int32), cells])
    pos = jnp.concatenate([jnp.asarray([-1], jnp.int32), cells])
    bc = lambda x: jnp.broadcast_to(x, (batch,) + x.shape)
    block = jnp.asarray(self._block)[None]
    return Layout(src=bc(src), pos=bc(pos), tgt=bc(jnp.full((n + 1,), -1, jnp.int32)),
                  mask=MaskSpec(kind="block_causal", q_block_ids=block, kv_block_ids=block),
                  perm=bc(jnp.asarray(self._perm)))

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    return self._layout(batch)

  def sample_plan(self, rng, batch: int, known=None):
    step_of = jnp.broadcast_to(jnp.asarray(self.diag), (batch, self.num_tokens))
    if known is not None:
      step_of = jnp.where(known, -1, step_of)
    from arjax.orders.base import Plan
    return Plan(perm=jnp.broadcast_to(jnp.asarray(self._perm), (batch, self.num_tokens)),
                step_of=step_of, num_steps=self.num_steps())

  def sample_layout(self, plan, known):
    return self._layout(plan.perm.shape[0]).hide_unknown(known)


@dataclasses.dataclass(frozen=True)
class LpdFields(GroupFields):
  """`config.order` of order 'lpd' (schedule 'one': LPD's 20-step table at 256 tokens, else
  arccos groups in N/8 steps)."""
  locality_orders: int = 64       # precomputed locality-aware sampling orders (0: random order).
  locality_seed: int = 0          # seed of that bank of orders.


@dataclasses.dataclass(frozen=True)
class ParFields:
  """`config.order` of order 'par'."""
  regions: int = 4                # n regions, generated in parallel after their first tokens.


@ORDERS.register("lpd", fields=LpdFields)
def _build_lpd(config, tokenizer):
  f = order_fields(LpdFields, config, "lpd")
  kw = _kw(f)
  if kw["schedule"] == "one":
    n = tokenizer.tokens_per_image
    kw.update(schedule="sizes", sizes=schedules.LPD_GROUP_SIZES_256_20) if n == 256 else \
        kw.update(schedule="arccos", num_steps=kw["num_steps"] or max(1, n // 8))
  return LpdOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid,
                  locality_orders=f.locality_orders, locality_seed=f.locality_seed, **kw)


@ORDERS.register("par", fields=ParFields)
def _build_par(config, tokenizer):
  f = order_fields(ParFields, config, "par")
  return ParOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid,
                  regions=f.regions)


@ORDERS.register("nar", fields=NoFields)
def _build_nar(config, tokenizer):
  order_fields(NoFields, config, "nar")
  return NarOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid)
