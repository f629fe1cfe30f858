"""Masked orders chosen by confidence: MaskGIT (Chang et al. 2022) and MaskGIL (Xin et al. 2025).

Training: a bidirectional model sees [class, tokens with a random subset replaced by [MASK]];
the subset size is gamma(r) N with r ~ U[0, 1) and gamma the mask schedule (`order.mask_schedule`:
'cosine' for MaskGIT, 'arccos' for MaskGIL); at least one token is masked. The loss is on the
masked tokens (`order.loss_on='masked'`, MaskGIT) or on every token ('all', MaskGIL's code).

Sampling: `order.num_steps` steps; each samples every unknown token and keeps the most
confident ones (confidence = log p + tau_t Gumbel, tau annealed to 0). How many are revealed:
`order.reveal='maskgit'` (floor(N0 gamma((t+1)/T)) stay masked) or 'maskgil' (per-step counts
proportional to gamma(linspace(1, 0, T))). The rule is `MaskedOrder.reveal_cells`, which the 'order'
sampler (arjax.sampling.orders) calls at every step.

`order.reveal='mar'` (MAR, Li et al. 2024, for continuous heads, which have no confidence): the
cells are revealed in a random order per row, floor(N0 cos(pi/2 (k+1)/K)) staying masked after
step k (the 'maskgit' count with the cosine schedule; N0 the unknown cells at the start: MAR's
N without inpainting); the plan fixes each cell's step up front (`Plan.step_of`), and
`max_reveal()` bounds the cells of one step so a sampler can draw only those; `reveal_counts(u)`
gives each step's count when u cells start unknown (the sampler sizes each step's draw by it).

Legend: B batch, N tokens, L = N + 1 slots.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.kernels.masks import MaskSpec
from arjax.orders import schedules
from arjax.orders.base import (ORDERS, SRC_CLASS, SRC_QUERY, Layout, Order, Plan, identity_perm,
                               order_fields, random_perm)


REVEALS = ("maskgit", "maskgil", "mar")


@dataclasses.dataclass(frozen=True)
class MaskedFields:
  """`config.order` of order 'masked' (MaskGIT's defaults; MaskGIL: arccos, all, maskgil)."""
  mask_schedule: str = "cosine"   # training mask ratio gamma(r): cosine | arccos | linear | square.
  loss_on: str = "masked"         # masked (MaskGIT) | all (MaskGIL's code).
  num_steps: int = 8              # sampling steps.
  reveal: str = "maskgit"         # which tokens a step reveals: maskgit | maskgil (confidence)
                                  # | mar (cosine count, random order; continuous heads).
  gumbel_temperature: float = 4.5  # initial temperature of the Gumbel noise on confidences.


def confidence_mask(rng, conf, known, num_reveal, gumbel_temp):
  """bool [B, N]: the `num_reveal` [B] unknown cells with the highest conf [B, N] +
  gumbel_temp Gumbel noise (MaskGIT)."""
  conf = conf + gumbel_temp * jax.random.gumbel(rng, conf.shape)
  conf = jnp.where(known, -jnp.inf, conf)
  ranked = jnp.sort(conf, axis=1)[:, ::-1]
  thr = jnp.take_along_axis(ranked, jnp.maximum(num_reveal - 1, 0)[:, None], axis=1)
  return (~known) & (conf >= thr) & (num_reveal[:, None] > 0)


class MaskedOrder(Order):
  name = "masked"
  mask_kind = "bidirectional"
  causal = False
  confidence = True

  def __init__(self, num_tokens, grid_positions, grid, *, mask_schedule: str = "cosine",
               loss_on: str = "masked", num_steps: int = 8, reveal: str = "maskgit",
               gumbel_temperature: float = 4.5):
    super().__init__(num_tokens, grid_positions, grid)
    if mask_schedule not in schedules.MASK_SCHEDULES:
      raise ValueError(f"order.mask_schedule={mask_schedule!r}; expected one of "
                       f"{schedules.MASK_SCHEDULES}")
    if loss_on not in ("masked", "all"):
      raise ValueError(f"order.loss_on={loss_on!r}; expected 'masked' or 'all'")
    if reveal not in REVEALS:
      raise ValueError(f"order.reveal={reveal!r}; expected one of {REVEALS}")
    if reveal == "mar" and mask_schedule != "cosine":
      raise ValueError(f"order.reveal='mar' counts with the cosine schedule (MAR); got "
                       f"order.mask_schedule={mask_schedule!r}")
    schedules.check_steps(num_steps, num_tokens, "order.num_steps")
    if not (math.isfinite(gumbel_temperature) and gumbel_temperature >= 0):
      raise ValueError(f"order.gumbel_temperature={gumbel_temperature}; expected a finite "
                       "number >= 0")
    self.mask_schedule, self.loss_on, self.reveal = mask_schedule, loss_on, reveal
    self.confidence = reveal != "mar"
    self.steps, self.gumbel_temperature = num_steps, gumbel_temperature
    r = np.linspace(1.0, 0.0, num_steps)
    self._reveal_weights = np.asarray(schedules.mask_ratio(r, mask_schedule, xp=np), np.float32)

  def num_steps(self) -> int:
    return self.steps

  def layout_for(self, known, predict) -> Layout:
    """known, predict: bool [B, N] -> [class, token or [MASK] ...] predicting `predict`."""
    b, n = known.shape
    cells = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
    src = jnp.where(known, cells, SRC_QUERY)
    tgt = jnp.where(predict, cells, -1)
    cat = lambda v, x: jnp.concatenate([jnp.full((b, 1), v, jnp.int32), x], 1)
    return Layout(src=cat(SRC_CLASS, src), pos=cat(-1, cells), tgt=cat(-1, tgt),
                  mask=MaskSpec(kind="bidirectional"), perm=identity_perm(b, n))

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    n = self.num_tokens
    k_ratio, k_which = jax.random.split(rng)
    r = jax.random.uniform(k_ratio, (batch,))
    num_masked = jnp.clip(jnp.ceil(schedules.mask_ratio(r, self.mask_schedule) * n), 1, n)
    rank = jnp.argsort(jax.random.uniform(k_which, (batch, n)), axis=1).argsort(axis=1)
    masked = rank < num_masked[:, None]
    predict = masked if self.loss_on == "masked" else jnp.ones_like(masked)
    return self.layout_for(~masked, predict)

  def sample_layout(self, plan, known) -> Layout:
    return self.layout_for(known, jnp.ones_like(known))

  def sample_plan(self, rng, batch: int, known=None):
    if self.reveal != "mar":
      return None  # confidence orders decide at each step.
    n = self.num_tokens
    known = jnp.zeros((batch, n), bool) if known is None else known
    perm = random_perm(rng, batch, n, known)  # known cells first, then a random order.
    num_known = known.sum(1)
    unknown_start = n - num_known
    # Revealed-so-far after each step, from the same count rule as MaskGIT's reveal.
    after, unknown = [], unknown_start
    for k in range(self.steps):
      left = schedules.maskgit_num_masked(k, self.steps, unknown_start, unknown, "cosine")
      after.append(unknown_start - left)
      unknown = left
    after = jnp.stack(after, 1)                                   # [B, K]
    rank = jnp.arange(n, dtype=jnp.int32)[None] - num_known[:, None]   # rank among unknowns
    step_in_perm = (after[:, None, :] <= rank[:, :, None]).sum(-1).astype(jnp.int32)
    step_in_perm = jnp.where(rank < 0, -1, step_in_perm)
    step_of = jnp.zeros((batch, n), jnp.int32).at[jnp.arange(batch)[:, None], perm].set(
        step_in_perm)
    return Plan(perm=perm, step_of=step_of, num_steps=self.steps)

  def reveal_counts(self, num_unknown: int) -> Tuple[int, ...]:
    """'mar': the cells each of the K steps reveals when `num_unknown` cells start unknown
    (static ints: the count rule of `sample_plan` run in numpy; without inpainting every row
    starts with N unknown, so a sampler can size each step's draw exactly)."""
    if self.reveal != "mar":
      raise ValueError(f"order 'masked' reveal={self.reveal!r} reveals by confidence: its "
                       "counts are not fixed before the draw; reveal_counts is for reveal='mar'")
    counts, unknown = [], int(num_unknown)
    for k in range(self.steps):
      left = 0 if k >= self.steps - 1 else int(np.clip(
          np.floor(num_unknown * math.cos(math.pi / 2 * (k + 1) / self.steps)), 1,
          max(unknown - 1, 0)))
      counts.append(unknown - left)
      unknown = left
    return tuple(counts)

  def max_reveal(self) -> int:
    """'mar': the most cells one step reveals, over every number of unknown cells 1..N (exact,
    by running the count rule in numpy); N for the confidence reveals."""
    if self.reveal != "mar":
      return self.num_tokens
    return max([1] + [max(self.reveal_counts(u)) for u in range(1, self.num_tokens + 1)])

  # -- the confidence rule ---------------------------------------------------------------------
  def num_to_reveal(self, t, num_unknown_start, num_unknown_now):
    """int32 [B]: tokens revealed at step t (all remaining ones at the last step)."""
    if self.reveal == "maskgit":
      left = schedules.maskgit_num_masked(t, self.steps, num_unknown_start, num_unknown_now,
                                          self.mask_schedule)
      return num_unknown_now - left
    # MaskGIL: counts proportional to the schedule, >= 1, scaled to this sample's unknowns.
    w = jnp.asarray(self._reveal_weights)
    counts = jnp.maximum(jnp.round(num_unknown_start[:, None] * w / w.sum()), 1.0)
    cum = jnp.minimum(jnp.cumsum(counts, axis=1), num_unknown_start[:, None]).astype(jnp.int32)
    done_after = jnp.where(t >= self.steps - 1, num_unknown_start, cum[:, t])
    return jnp.maximum(done_after - (num_unknown_start - num_unknown_now), 0)

  def reveal_cells(self, step, known, plan, *, key=None, confidence=None, num_unknown_start=None):
    """The num_to_reveal(step) unknown cells with the highest confidence + tau_t Gumbel; for
    'mar' the cells the plan gives this step."""
    if self.reveal == "mar":
      return (plan.step_of == step) & ~known
    num = self.num_to_reveal(step, num_unknown_start, (~known).sum(1))
    return confidence_mask(key, confidence(), known, num, self.gumbel_temp(step))

  def gumbel_temp(self, t):
    return schedules.maskgit_gumbel_temperature(t, self.steps, self.gumbel_temperature,
                                                kind=self.reveal)


@ORDERS.register("masked", fields=MaskedFields)
def _build_masked(config, tokenizer):
  f = order_fields(MaskedFields, config, "masked")
  return MaskedOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid,
                     mask_schedule=f.mask_schedule, loss_on=f.loss_on,
                     num_steps=f.num_steps or 8, reveal=f.reveal,
                     gumbel_temperature=f.gumbel_temperature)
