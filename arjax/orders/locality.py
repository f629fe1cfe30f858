"""LPD's locality-aware generation order (Zhang et al. 2025, "Locality-aware Parallel Decoding").

Sampling picks each step's group on the token grid so that the new cells sit next to cells
already generated (strong dependence on context, good for quality) but away from each other
(weak dependence within the group, since its tokens are drawn independently):

  step 0: one cell at random.
  step k: score every free cell by sum(1 / euclidean distance) over generated cells in its
          8-neighbourhood. Walk the cells with score >= `proximity` from the highest score down
          (ties in random order) and take each one unless it lies within Chebyshev distance
          `repulsion` of a cell taken earlier in this step. Fill the rest of the group by
          farthest-point sampling among the cells left over (nearest distance to this step's
          cells, largest first; at random when the step has none yet).

The order depends only on randomness, not on the model, so like LPD's released code it is
computed on the host; `locality_orders` draws a bank of them once, and the sampler picks one
per sample inside jit.

Legend: N = h * w cells, G groups, M orders in a bank.
"""
from __future__ import annotations

import functools
from typing import Sequence, Tuple

import numpy as np

# 1 / euclidean distance to the 8 neighbours (0 at the centre).
_NEIGHBOUR_WEIGHTS = np.array([[2 ** -0.5, 1.0, 2 ** -0.5],
                               [1.0, 0.0, 1.0],
                               [2 ** -0.5, 1.0, 2 ** -0.5]])


def _proximity(generated: np.ndarray) -> np.ndarray:
  """generated bool [h, w] -> float [h, w]: sum of 1/distance to generated 8-neighbours."""
  h, w = generated.shape
  padded = np.pad(generated.astype(np.float64), 1)
  score = np.zeros((h, w))
  for di in range(3):
    for dj in range(3):
      score += _NEIGHBOUR_WEIGHTS[di, dj] * padded[di:di + h, dj:dj + w]
  return score


def locality_aware_order(grid: Tuple[int, int], group_sizes: Sequence[int],
                         rng: np.random.Generator, proximity: float = 1.0,
                         repulsion: int = 1) -> np.ndarray:
  """int32 [N]: raster indices of the cells in generation order (groups back to back)."""
  h, w = grid
  n = h * w
  if sum(group_sizes) != n or min(group_sizes) < 1:
    raise ValueError(f"locality-aware order: group sizes {list(group_sizes)} must be positive "
                     f"and sum to the {n} cells of the {h}x{w} grid")
  rows, cols = np.divmod(np.arange(n), w)
  generated = np.zeros(n, bool)
  order = []
  for step, size in enumerate(group_sizes):
    free = np.flatnonzero(~generated)
    if step == 0:
      first = [int(rng.choice(free))]
      picked = first + _farthest_points(first, [c for c in free if c != first[0]], size - 1,
                                        rows, cols, rng)
    else:
      prox = _proximity(generated.reshape(h, w)).ravel()
      ranked = free[np.lexsort((rng.random(free.size), -prox[free]))]  # score down, random ties.
      ranked_score = prox[ranked]
      strong = [int(c) for c in ranked[ranked_score >= proximity]]
      weak = [int(c) for c in ranked[ranked_score < proximity]]
      picked, passed = [], []
      while len(picked) < size and strong:
        c = strong.pop(0)
        near = any(max(abs(rows[c] - rows[p]), abs(cols[c] - cols[p])) <= repulsion
                   for p in picked)
        (passed if near else picked).append(c)
      leftover = weak + passed + strong
      picked += _farthest_points(picked, leftover, size - len(picked), rows, cols, rng)
    generated[picked] = True
    order += picked
  return np.asarray(order, np.int32)


def _farthest_points(anchors, candidates, count, rows, cols, rng):
  """`count` of `candidates`, each the farthest (euclidean) from the anchors and earlier picks;
  the first at random when there are no anchors."""
  if count <= 0:
    return []
  if len(candidates) <= count:
    return list(candidates)
  cand = np.asarray(candidates)
  xy = np.stack([rows[cand], cols[cand]], 1).astype(np.float64)
  chosen, taken = [], np.zeros(cand.size, bool)
  if anchors:
    a = np.stack([rows[anchors], cols[anchors]], 1).astype(np.float64)
    nearest = np.sqrt(((xy[:, None] - a[None]) ** 2).sum(-1)).min(1)
  else:
    nearest = None
  for _ in range(count):
    if nearest is None:
      i = int(rng.integers(cand.size))
    else:
      masked = np.where(taken, -1.0, nearest)
      i = int(np.argmax(masked))
    chosen.append(int(cand[i]))
    taken[i] = True
    d = np.sqrt(((xy - xy[i]) ** 2).sum(-1))
    nearest = d if nearest is None else np.minimum(nearest, d)
  return chosen


def locality_orders(grid: Tuple[int, int], group_sizes: Sequence[int], count: int,
                    seed: int = 0) -> np.ndarray:
  """int32 [M, N]: `count` locality-aware orders drawn with `seed` (a bank for sampling).

  Cached: every build of a model (abstract, initialised, bound for sampling) constructs its
  order, and drawing 64 orders of 256 cells takes about a second on a CPU.
  """
  bank = _cached_bank(tuple(grid), tuple(int(s) for s in group_sizes), int(count), int(seed))
  return bank.copy()


@functools.lru_cache(maxsize=16)
def _cached_bank(grid, group_sizes, count, seed) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return np.stack([locality_aware_order(grid, group_sizes, rng) for _ in range(count)])
