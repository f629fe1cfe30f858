"""Random scale lists for next-scale training at varying steps (FlexVAR, Jiao et al. 2025,
"FlexVAR: Flexible Visual Autoregressive Modeling without Residual Prediction"; the rule of its
trainer.gen_curr_patch_nums), and the slot tables of a list drawn inside jit.

A list is drawn as (FlexVAR's numbers for a 16x16 grid in brackets):

  with probability default_prob [0.05]: the default list [1,2,3,4,5,6,8,10,13,16];
  else: first [1, 2] + for each range (lo, hi, count) [(3, 10, 5), (11, 15, 2)] `count`
        distinct sides drawn uniformly from lo..hi, sorted + [grid];
  then u ~ U(0, 1) drops #{thresholds t: u > t} [0.9, 0.95, 0.98, 0.99] sides chosen uniformly
  among those that are neither first nor the grid;
  then, while the list holds more than max_tokens [680] tokens, one side chosen uniformly among
  the (up to) three before the grid (never a first side) is dropped.

FlexVAR's last rule picks among the last four entries, the grid included; here the grid is never
dropped, so every list ends at the tokenizer's grid (the targets' last map is the latent itself).

Inside jit a list has a fixed-size form: sizes int32 [M] (the sides, then zeros) and its length
K. `slot_tables` turns it into per-slot tables over a fixed L >= every list's token count, so
one compiled step serves every list.

Legend: M longest list, K its length, L slots (padded token count), G grid side.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.orders.scales import check_scales


@dataclasses.dataclass(frozen=True)
class ScaleListSpec:
  """The rule above; `check` validates it (one line naming the field and the constraint)."""
  grid: int
  default: Tuple[int, ...]
  first: Tuple[int, ...] = (1, 2)
  draws: Tuple[Tuple[int, int, int], ...] = ((3, 10, 5), (11, 15, 2))
  default_prob: float = 0.05
  drop_thresholds: Tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)
  max_tokens: int = 680
  where: str = "model"

  def check(self) -> "ScaleListSpec":
    w = self.where
    default = check_scales(self.default, f"{w} default scales", grid=self.grid)
    n = sum(x * x for x in default)
    if n > self.max_tokens:
      raise ValueError(f"{w} default scales={list(default)} has {n} tokens, more than "
                       f"{w}.max_tokens={self.max_tokens}")
    first = check_scales(self.first, f"{w}.first_scales")
    if first[-1] >= self.grid:
      raise ValueError(f"{w}.first_scales={list(first)} must stay below the grid {self.grid}")
    prev = first[-1]
    for lo, hi, count in self.draws:
      if lo <= prev or hi >= self.grid or hi < lo:
        raise ValueError(f"{w} draw range [{lo}, {hi}] must lie strictly between {prev} and the "
                         f"grid {self.grid}, ranges increasing (draw_lo / draw_hi)")
      if not 0 <= count <= hi - lo + 1:
        raise ValueError(f"{w} draw_count={count} for range [{lo}, {hi}]: expected 0 .. "
                         f"{hi - lo + 1} distinct sides")
      prev = hi
    least = sum(s * s for s in first) + self.grid ** 2
    if least > self.max_tokens:
      raise ValueError(f"{w}.max_tokens={self.max_tokens} is below the first scales plus the "
                       f"grid ({least} tokens): no list fits")
    if not 0.0 <= self.default_prob <= 1.0:
      raise ValueError(f"{w}.default_prob={self.default_prob}: expected a probability")
    return self

  @property
  def slots(self) -> int:
    """M: the longest list (before drops)."""
    return max(len(self.default), len(self.first) + sum(c for _, _, c in self.draws) + 1)


def sample_scale_list(key, spec: ScaleListSpec):
  """-> (sizes int32 [M]: the sides of a random list then zeros, K int32 []: its length)."""
  m, nf = spec.slots, len(spec.first)
  k_use, k_draw, k_u, k_drop, k_budget = jax.random.split(key, 5)
  parts = [jnp.asarray(spec.first, jnp.int32)]
  for i, (lo, hi, count) in enumerate(spec.draws):
    picked = jax.random.permutation(jax.random.fold_in(k_draw, i), hi - lo + 1)[:count] + lo
    parts.append(jnp.sort(picked).astype(jnp.int32))
  parts.append(jnp.asarray([spec.grid], jnp.int32))
  drawn = jnp.concatenate(parts)
  drawn = jnp.pad(drawn, (0, m - drawn.shape[0]))
  default = jnp.asarray(list(spec.default) + [0] * (m - len(spec.default)), jnp.int32)
  use_default = jax.random.uniform(k_use) < spec.default_prob
  sizes = jnp.where(use_default, default, drawn)
  present = sizes > 0
  idx = jnp.arange(m)
  last = jnp.sum(present) - 1

  # Drops: a uniform subset of the middle sides (neither first nor the grid).
  n_drop = jnp.sum(jax.random.uniform(k_u) > jnp.asarray(spec.drop_thresholds, jnp.float32))
  middle = present & (idx >= nf) & (idx != last)
  score = jnp.where(middle, jax.random.uniform(k_drop, (m,)), jnp.inf)
  rank = jnp.argsort(jnp.argsort(score))
  present = present & ~(middle & (rank < n_drop))

  def tokens(p):
    return jnp.sum(jnp.where(p, sizes * sizes, 0))

  def candidates(p):
    after = jnp.cumsum(p[::-1])[::-1] - p  # present sides after each slot
    return p & (idx >= nf) & (after >= 1) & (after <= 3)

  def cond(c):
    p, _ = c
    return (tokens(p) > spec.max_tokens) & jnp.any(candidates(p))

  def body(c):
    p, i = c
    s = jax.random.uniform(jax.random.fold_in(k_budget, i), (m,))
    pick = jnp.argmax(jnp.where(candidates(p), s, -1.0))
    return p.at[pick].set(False), i + 1

  present, _ = jax.lax.while_loop(cond, body, (present, jnp.int32(0)))
  order = jnp.argsort(jnp.where(present, idx, m + idx))
  sizes = jnp.where(present[order], sizes[order], 0)
  return sizes, jnp.sum(present).astype(jnp.int32)


def slot_tables(sizes, length: int):
  """sizes int32 [M] (a list then zeros) -> per slot int32 [L] tables (scale, side, row, col)
  and bool valid [L]: slot t of the list's row-major concatenation; slots past the list's
  tokens are invalid (scale M, side 1, row 0, col 0)."""
  m = sizes.shape[0]
  sq = sizes * sizes
  ends = jnp.cumsum(sq)
  t = jnp.arange(length)
  k = jnp.sum(ends[None, :] <= t[:, None], axis=1)
  valid = t < ends[-1]
  kc = jnp.minimum(k, m - 1)
  side = jnp.maximum(sizes[kc], 1)
  local = t - (ends[kc] - sq[kc])
  row = jnp.where(valid, local // side, 0)
  col = jnp.where(valid, local % side, 0)
  scale = jnp.where(valid, k, m)
  return scale, jnp.where(valid, side, 1), row, col, valid


def static_sizes(scales: Sequence[int], m: int) -> np.ndarray:
  """A python list as the fixed-size form: int32 [m]."""
  return np.asarray(list(scales) + [0] * (m - len(scales)), np.int32)
