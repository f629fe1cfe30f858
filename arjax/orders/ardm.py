"""Order-agnostic autoregressive diffusion (ARDM; Hoogeboom et al. 2022, "Autoregressive
Diffusion Models").

A bidirectional model sees a random subset of the tokens and predicts the others. Training
draws, per sequence of D scored tokens, a step t ~ U{1, ..., D} and a uniform permutation
sigma; the t-1 tokens sigma(1..t-1) are known, the D-t+1 others are predicted, and

    L_t = D / (D - t + 1) * sum_{k masked} -log p(x_k | x_known)

is an unbiased estimate of the order-agnostic bound -E_sigma log p(x | sigma) >= -log p(x)
(each order's product of conditionals is a likelihood; Jensen over the orders). Tokens that a
text source does not score (`token_mask` 0) are always known: the bound is then on
-log p(scored | unscored) with D the number of scored tokens.

Parallel generation with a step budget (ARDM, Sec. 4): generating the tokens t..t'-1 of the
order in one step, all conditioned on the t-1 known ones, costs (t' - t) l_t in the bound,
where l_t is the expected per-token loss at step t (`step_losses` of the model). For K steps
the policy 1 = t_0 < t_1 < ... < t_K = D + 1 minimising sum_k (t_{k+1} - t_k) l_{t_k} is found
by dynamic programming in O(K D^2) (`dp_policy`; `brute_force_policy` enumerates all of them
for small D). The policy is fitted on the training curve and its cost is read on the
validation curve (`policy_cost`).

Sampling ('order' sampler): step k reveals `sizes[k]` unknown cells chosen uniformly at random
(a random order, as in training), sizes from `order.budget` (comma-separated, e.g. the DP
policy's step sizes) or else equal steps; `order.num_steps` = 0 means one token per step (D
steps: exact ancestral sampling of a random order).

Legend: B batch, N (= D) tokens, K steps.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.orders.base import ORDERS, order_fields
from arjax.orders.masked import MaskedOrder, confidence_mask


@dataclasses.dataclass(frozen=True)
class ARDMFields:
  """`config.order` of order 'ardm'."""
  num_steps: int = 0              # sampling steps K (0: one token per step, D steps).
  budget: str = ""                # step sizes "s1,s2,...,sK" summing to N (''= equal steps).


def parse_budget(budget: str, num_tokens: int, num_steps: int) -> np.ndarray:
  """int [K] step sizes from `order.budget` (or equal steps); errors name the field."""
  if not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f"order.num_steps={num_steps!r}; expected an int >= 1 (or 0: one token "
                     "per step)")
  if budget.strip():
    try:
      sizes = np.array([int(s) for s in budget.split(",")], np.int64)
    except ValueError:
      raise ValueError(f"order.budget={budget!r}; expected comma-separated integers") from None
    if (sizes < 1).any() or sizes.sum() != num_tokens:
      raise ValueError(f"order.budget={budget!r}: step sizes must be >= 1 and sum to the "
                       f"{num_tokens} tokens, got sum {int(sizes.sum())}")
    if num_steps and len(sizes) != num_steps:
      raise ValueError(f"order.budget has {len(sizes)} steps but order.num_steps={num_steps}")
    return sizes
  k = num_steps or num_tokens
  if k > num_tokens:
    raise ValueError(f"order.num_steps={k} exceeds the {num_tokens} tokens")
  return np.diff(np.round(np.linspace(0, num_tokens, k + 1)).astype(np.int64))


class ARDMOrder(MaskedOrder):
  name = "ardm"
  mask_kind = "bidirectional"
  causal = False
  confidence = True   # revealed through `reveal_cells` (at random, see the module docstring).
  models = ("ardm",)  # the bound's weights live in model 'ardm's loss.

  def __init__(self, num_tokens, grid_positions, grid, *, num_steps: int = 0, budget: str = ""):
    self.sizes = parse_budget(budget, num_tokens, num_steps)
    super().__init__(num_tokens, grid_positions, grid, num_steps=len(self.sizes))
    self._done_after = np.cumsum(self.sizes).astype(np.int32)

  def train_layout(self, rng, batch: int, step=None, train: bool = True):
    known, predict, _ = ardm_draw(rng, jnp.ones((batch, self.num_tokens), bool))
    return self.layout_for(known, predict)

  def reveal_cells(self, step, known, plan, *, key=None, confidence=None, num_unknown_start=None):
    """`sizes[step]` unknown cells, uniformly at random (all remaining ones at the last step)."""
    done_after = jnp.asarray(self._done_after)[step]
    done_after = jnp.where(step >= self.steps - 1, self.num_tokens, done_after)
    num = jnp.maximum(done_after - (self.num_tokens - (~known).sum(1)), 0)
    return confidence_mask(key, jnp.zeros(known.shape, jnp.float32), known, num, 1.0)


def ardm_draw(rng, scored) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """One draw of (t, sigma) per row. scored bool [B, N] (D = scored.sum(1) per row).

  Returns known bool [B, N] (the unscored tokens and the t-1 first of the order), predict bool
  [B, N] (the D-t+1 other scored tokens) and weight float32 [B] = D / (D - t + 1) (0 for a row
  with D = 0), so that weight * sum_{predict} -log p is the ARDM estimate of the row's bound.
  """
  b, n = scored.shape
  k_t, k_perm = jax.random.split(rng)
  d = scored.sum(1)
  t = jnp.floor(jax.random.uniform(k_t, (b,)) * d).astype(jnp.int32) + 1   # U{1..D}
  t = jnp.minimum(t, jnp.maximum(d, 1))
  u = jnp.where(scored, jax.random.uniform(k_perm, (b, n)), 2.0)  # unscored rank last.
  rank = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
  first = rank < (t - 1)[:, None]
  known = ~scored | first
  predict = scored & ~first
  weight = jnp.where(d > 0, d / jnp.maximum(d - t + 1, 1), 0.0).astype(jnp.float32)
  return known, predict, weight


def step_draw(rng, batch: int, n: int, t) -> Tuple[jax.Array, jax.Array]:
  """(known, predict) bool [B, N] at a fixed step t (1..N): t-1 random cells known."""
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(rng, (batch, n)), axis=1), axis=1)
  known = rank < t - 1
  return known, ~known


# -- step-budget policies ---------------------------------------------------------------------
def policy_cost(losses: Sequence[float], boundaries: Sequence[int]) -> float:
  """sum_k (t_{k+1} - t_k) l_{t_k} for boundaries [t_0 = 1, ..., t_K = D + 1] and losses
  [l_1 .. l_D] (index t-1): the bound, in the losses' units, of generating with that policy."""
  l = np.asarray(losses, np.float64)
  b = list(boundaries)
  return float(sum((b[k + 1] - b[k]) * l[b[k] - 1] for k in range(len(b) - 1)))


def dp_policy(losses: Sequence[float], num_steps: int) -> Tuple[float, List[int]]:
  """The K-step policy of least cost (ARDM's dynamic program). Returns (cost, boundaries
  [1 = t_0 < ... < t_K = D + 1]); step k generates t_{k+1} - t_k tokens."""
  l = np.asarray(losses, np.float64)
  d = len(l)
  if not 1 <= num_steps <= d:
    raise ValueError(f"num_steps={num_steps}; expected 1..{d} (the number of tokens)")
  inf = np.inf
  # cost[k, s]: least cost of generating the first s tokens in k steps.
  cost = np.full((num_steps + 1, d + 1), inf)
  arg = np.zeros((num_steps + 1, d + 1), np.int64)
  cost[0, 0] = 0.0
  s = np.arange(d + 1)
  for k in range(1, num_steps + 1):
    for e in range(k, d + 1):
      prev = s[:e]                                      # s tokens known before the step.
      c = cost[k - 1, :e] + (e - prev) * l[prev]        # a step from s known: loss l_{s+1}.
      j = int(np.argmin(c))
      cost[k, e], arg[k, e] = c[j], j
  bounds, e = [d], d
  for k in range(num_steps, 0, -1):
    e = int(arg[k, e])
    bounds.append(e)
  return float(cost[num_steps, d]), [x + 1 for x in bounds[::-1]]


def brute_force_policy(losses: Sequence[float], num_steps: int) -> Tuple[float, List[int]]:
  """Every K-step policy enumerated (small D only): (least cost, its boundaries)."""
  d = len(losses)
  best: Optional[Tuple[float, List[int]]] = None
  for inner in itertools.combinations(range(2, d + 1), num_steps - 1):
    b = [1, *inner, d + 1]
    c = policy_cost(losses, b)
    if best is None or c < best[0] - 1e-12:
      best = (c, b)
  return best


def sizes_of(boundaries: Sequence[int]) -> List[int]:
  """Step sizes t_{k+1} - t_k of a policy (the `order.budget` string's numbers)."""
  return [int(b - a) for a, b in zip(boundaries[:-1], boundaries[1:])]


@ORDERS.register("ardm", fields=ARDMFields)
def _build_ardm(config, tokenizer):
  f = order_fields(ARDMFields, config, "ardm")
  return ARDMOrder(tokenizer.tokens_per_image, tokenizer.grid_positions(), tokenizer.grid,
                   num_steps=f.num_steps, budget=f.budget)
