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

Legend: B batch, N tokens, L = N + 1 slots.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from arjax.kernels.masks import MaskSpec
from arjax.orders import schedules
from arjax.orders.base import (ORDERS, SRC_CLASS, SRC_QUERY, Layout, Order, identity_perm,
                               order_fields)


@dataclasses.dataclass(frozen=True)
class MaskedFields:
  """`config.order` of order 'masked' (MaskGIT's defaults; MaskGIL: arccos, all, maskgil)."""
  mask_schedule: str = "cosine"   # training mask ratio gamma(r): cosine | arccos | linear | square.
  loss_on: str = "masked"         # masked (MaskGIT) | all (MaskGIL's code).
  num_steps: int = 8              # sampling steps.
  reveal: str = "maskgit"         # how many tokens a step reveals: maskgit | maskgil.
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
    if reveal not in ("maskgit", "maskgil"):
      raise ValueError(f"order.reveal={reveal!r}; expected 'maskgit' or 'maskgil'")
    schedules.check_steps(num_steps, num_tokens, "order.num_steps")
    if not (math.isfinite(gumbel_temperature) and gumbel_temperature >= 0):
      raise ValueError(f"order.gumbel_temperature={gumbel_temperature}; expected a finite "
                       "number >= 0")
    self.mask_schedule, self.loss_on, self.reveal = mask_schedule, loss_on, reveal
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
    return None

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
    """The num_to_reveal(step) unknown cells with the highest confidence + tau_t Gumbel."""
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
