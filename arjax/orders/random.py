"""Random-permutation orders: RAR, ARPG and RandAR.

'random' (RAR, Yu et al. 2024; ARPG, Li et al. 2025): the next-token layout of
`perm_layout` over a random permutation. RAR uses the random order with probability r(step),
annealed from 1 to 0 between `order.anneal_start` and `order.anneal_end` training steps
(`schedules.rar_random_ratio`; -1 = always random) and samples in raster order. ARPG samples
random orders in parallel groups (`order.schedule` 'arpg_arccos' / 'arpg_cosine'), which needs
a model with separate target queries (arjax.models.arpg); order 'arpg' is that order with ARPG's
defaults (arccos schedule, 64 steps).

'randar' (RandAR, Pang et al. 2025): position-instruction slots interleaved with the tokens,
[class, P_pi0, x_pi0, P_pi1, x_pi1, ..., P_pi(N-1)], under a causal mask; only the P slots
predict (each the token at its own position). Parallel decoding feeds the m queries of a step
together: with `Layout.hide_unknown` a query sees the earlier queries of its step but not their
(unknown) tokens. `OrderSampler` recomputes the whole training layout at every step with the
not-yet-generated tokens hidden, which gives the logits of RandAR's inference layout
[.., P_q0, P_q1, ..] (tests/orders/test_issue_checks.py compares the two at every step); the
KV-cached 'cached_order' sampler (RandAR's default) feeds [x_q0, P_q1, x_q1, ..., x_q(m-1)] and
the next queries per step, as RandAR's cache rewrite does (arjax.orders.cache_plan).

Legend: B batch, N tokens, L = 2N slots (randar) or N slots (random).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from arjax.kernels.masks import MaskSpec
from arjax.orders import schedules
from arjax.orders.base import (ORDERS, SRC_CLASS, SRC_QUERY, Layout, Order, identity_perm,
                               order_fields, perm_layout, plan_from_cumulative, random_perm)


@dataclasses.dataclass(frozen=True)
class GroupFields:
  """`config.order` of the orders sampled in groups of a schedule (randar; lpd adds its own)."""
  schedule: str = "one"           # group schedule (schedules.GROUP_SCHEDULES); one: 1 per step.
  num_steps: int = 0              # sampling steps (0: the order's default).
  group_sizes: Tuple[int, ...] = ()  # schedule 'sizes': tokens generated at each step.


@dataclasses.dataclass(frozen=True)
class RandomFields(GroupFields):
  """`config.order` of order 'random' (RAR; ARPG's schedules with model 'arpg')."""
  anneal_start: int = -1          # RAR: step where the random-order ratio starts to fall (-1: never).
  anneal_end: int = -1            # RAR: step where it reaches 0 (raster from then on).
  sample_order: str = "random"    # random | raster (RAR samples in raster order).


@dataclasses.dataclass(frozen=True)
class ArpgFields:
  """`config.order` of order 'arpg' (trains on random orders only: no annealing fields)."""
  schedule: str = "arpg_arccos"   # arpg_arccos (the repo's recommendation) | arpg_cosine.
  num_steps: int = 0              # parallel sampling steps (0: min(64, N)).


class _PermutationOrder(Order):
  """Shared sampling of the permutation orders: a permutation and a group schedule."""
  sample_random = True

  def __init__(self, num_tokens, grid_positions, grid, *, schedule: str = "one",
               num_steps: int = 0, sizes=()):
    super().__init__(num_tokens, grid_positions, grid)
    # Name the config field here; the schedule formulas below only see numbers.
    if num_steps < 0:
      raise ValueError(f"order.num_steps={num_steps}; expected >= 1 (0: the order's default)")
    if schedule == "sizes" and (min(sizes, default=0) < 1 or sum(sizes) != num_tokens):
      raise ValueError(f"order.group_sizes={tuple(sizes)}; expected sizes >= 1 summing to the "
                       f"{num_tokens} tokens")
    self.schedule = schedule
    self.cumulative = schedules.group_cumulative(schedule, num_steps or num_tokens, num_tokens,
                                                 sizes)

  @property
  def max_group(self) -> int:
    c = [0] + list(self.cumulative)
    return max(b - a for a, b in zip(c[:-1], c[1:]))

  def num_steps(self) -> int:
    return len(self.cumulative)

  def sample_plan(self, rng, batch: int, known=None):
    if self.sample_random:
      perm = random_perm(rng, batch, self.num_tokens, known)
    else:
      perm = identity_perm(batch, self.num_tokens)
    return plan_from_cumulative(perm, self.cumulative, known)

  def sample_layout(self, plan, known):
    return self.layout_for(plan.perm).hide_unknown(known)

  def layout_for(self, perm) -> Layout:
    raise NotImplementedError


class RandomOrder(_PermutationOrder):
  """RAR / ARPG: next-token prediction over a random permutation."""
  name = "random"
  mask_kind = "causal"

  def __init__(self, num_tokens, grid_positions, grid, *, anneal_start: int = -1,
               anneal_end: int = -1, sample_order: str = "random", **kw):
    super().__init__(num_tokens, grid_positions, grid, **kw)
    if sample_order not in ("random", "raster"):
      raise ValueError(f"order.sample_order={sample_order!r}; expected 'random' or 'raster'")
    if (anneal_start < 0) != (anneal_end < 0) or anneal_end < anneal_start:
      raise ValueError(f"order.anneal_start={anneal_start}, order.anneal_end={anneal_end}: give "
                       "both (0 <= start <= end) or neither (-1: always random)")
    self.anneal_start, self.anneal_end = anneal_start, anneal_end
    self.sample_random = sample_order == "random"

  @property
  def anneals(self) -> bool:
    return self.anneal_start >= 0

  def random_ratio(self, step=None, train: bool = True):
    """Probability of a random permutation: r(step) while annealing; 1 without annealing.

    Evaluation (train=False) uses the order the model ends with: raster after annealing.
    """
    if not self.anneals:
      return jnp.float32(1.0)
    if not train:
      return jnp.float32(0.0)
    if step is None:
      raise ValueError("order 'random' with annealing needs the training step (batch['step'])")
    return schedules.rar_random_ratio(step, self.anneal_start, self.anneal_end)

  def layout_for(self, perm) -> Layout:
    return perm_layout(perm, MaskSpec(kind="causal"))

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    r = self.random_ratio(step, train)
    k_perm, k_use = jax.random.split(rng)
    use = jax.random.uniform(k_use, (batch,)) < r
    perm = jnp.where(use[:, None], random_perm(k_perm, batch, self.num_tokens),
                     identity_perm(batch, self.num_tokens))
    return self.layout_for(perm)


class RandArOrder(_PermutationOrder):
  """RandAR: position-instruction tokens interleaved with the content tokens."""
  name = "randar"
  mask_kind = "causal"

  def layout_for(self, perm) -> Layout:
    b, n = perm.shape
    q = jnp.full((b, n), SRC_QUERY, jnp.int32)
    # Interleave [P_t, x_t] for t = 0..N-1, then drop x_(N-1): nothing predicts from it.
    src = jnp.stack([q, perm], 2).reshape(b, 2 * n)[:, :-1]
    pos = jnp.stack([perm, perm], 2).reshape(b, 2 * n)[:, :-1]
    tgt = jnp.stack([perm, jnp.full_like(perm, -1)], 2).reshape(b, 2 * n)[:, :-1]
    cls = jnp.full((b, 1), SRC_CLASS, jnp.int32)
    none = jnp.full((b, 1), -1, jnp.int32)
    return Layout(src=jnp.concatenate([cls, src], 1), pos=jnp.concatenate([none, pos], 1),
                  tgt=jnp.concatenate([none, tgt], 1), mask=MaskSpec(kind="causal"), perm=perm)

  def train_layout(self, rng, batch: int, step=None, train: bool = True) -> Layout:
    return self.layout_for(random_perm(rng, batch, self.num_tokens))


def _kw(f: GroupFields):
  return dict(schedule=f.schedule, num_steps=f.num_steps, sizes=tuple(f.group_sizes))


@ORDERS.register("random", fields=RandomFields)
def _build_random(config, tokenizer):
  f = order_fields(RandomFields, config, "random")
  return RandomOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid,
                     anneal_start=f.anneal_start, anneal_end=f.anneal_end,
                     sample_order=f.sample_order, **_kw(f))


class ArpgOrder(RandomOrder):
  """ARPG (Li et al. 2025): a random order per sample in training and sampling, sampled in
  parallel groups of the 'arpg_arccos' (default, the repo's recommendation) or 'arpg_cosine'
  schedule; needs model 'arpg' (a query per target)."""
  name = "arpg"


@ORDERS.register("arpg", fields=ArpgFields)
def _build_arpg(config, tokenizer):
  n = tokenizer.tokens_per_image
  f = order_fields(ArpgFields, config, "arpg")
  if f.schedule not in ("arpg_arccos", "arpg_cosine"):
    raise ValueError(f"order 'arpg': order.schedule={f.schedule!r}; expected 'arpg_arccos' or "
                     "'arpg_cosine'")
  return ArpgOrder(n, tokenizer.grid_positions(), tokenizer.grid, schedule=f.schedule,
                   num_steps=f.num_steps or min(64, n))


@ORDERS.register("randar", fields=GroupFields)
def _build_randar(config, tokenizer):
  f = order_fields(GroupFields, config, "randar")
  kw = _kw(f)
  if kw["schedule"] == "one" and f.num_steps not in (0, tokenizer.tokens_per_image):
    kw["schedule"] = "randar"
  return RandArOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid,
                     **kw)
