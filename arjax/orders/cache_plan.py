"""KV-cache schedules of fixed-group orders: which layout slots each sampling step feeds, which
of them stay in the cache, and what every fed slot may see.

The 'order' sampler recomputes the whole layout of a fixed-group order (RandAR, LPD, PAR, NAR,
random) at every step, with the slots of cells not generated yet hidden (`Layout.hide_unknown`).
A slot's hidden state at step k depends only on the slots it may see that are available at k
(the class, start and query slots always; a content slot once its cell's step has passed). This
module works that out once, on the host, in *rank space* (a content slot carries the t-th cell of
the generation order, not a fixed cell), which is the same for every sample of the order:

  final[s]   the first step from which slot s's hidden state no longer changes: s is available
             and so is everything it sees, recursively (a fixpoint over the mask).
  kept       slots written to the cache at their final step because a slot fed at a later step
             sees them (RandAR: x_t and P_t; LPD: content; PAR / NAR: every slot).
  transient  slots a step needs whose state is not final yet (RandAR: the queries P of a parallel
             step, which see each other; LPD: a group's queries). They are fed after the step's
             kept slots, written past the cache's valid length and overwritten by the next
             step, so later steps never read them.

A step feeds  [kept slots final at k | transient slots]  (padded to F); each fed row sees the
cached slots and the fed slots the training mask lets it see (`mask[k]` [F, S]). By induction on
k every fed row has its recomputed state, so the logits equal recomputation (to float rounding).

Legend: L layout slots, N tokens, K steps, F fed slots per step (padded), G targets per step
(padded), S cache slots.
"""
from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class CachePlan:
  """Host tables of a cached sampling run; -1 pads. Ranks are positions in the generation order
  (a row maps rank r to cell perm[b, r]); SRC_* codes (< 0) pass through.

  src, pos, tgt: int32 [K, F] the fed slots' source / position / target (ranks or SRC_*).
  num_kept: int32 [K] kept slots fed at step k (they come first; the cache grows by this).
  cache_at: int32 [K] cache slot of the step's first fed row.
  mask: bool [K, F, S] what fed row i may see among the cache slots.
  read_a, read_b: int32 [K, G] fed rows whose outputs predict the step's targets (a model with
    two heads combines two; -1: none).
  target: int32 [K, G] the targets' ranks.
  cache_len: S, the cache slots to allocate.
  """
  src: np.ndarray
  pos: np.ndarray
  tgt: np.ndarray
  num_kept: np.ndarray
  cache_at: np.ndarray
  mask: np.ndarray
  read_a: np.ndarray
  read_b: np.ndarray
  target: np.ndarray
  cache_len: int

  @property
  def num_steps(self) -> int:
    return int(self.src.shape[0])

  @property
  def fed_per_step(self) -> int:
    return int(self.src.shape[1])

  def fed_slots(self) -> int:
    """Slots fed through the model over all steps (the cost measure of a cached run)."""
    return int((self.src != PAD).sum())


PAD = -1000  # a fed row that is padding (never a slot source: SRC_* codes are -1 .. -3).


def _final_steps(mask: np.ndarray, avail: np.ndarray) -> np.ndarray:
  """final[s] = max(avail[s], max over visible s' of final[s']): a monotone fixpoint."""
  final = avail.copy()
  for _ in range(mask.shape[0] + 1):
    nxt = np.maximum(avail, np.where(mask, final[None, :], -1).max(1))
    if np.array_equal(nxt, final):
      return final
    final = nxt
  raise AssertionError("cache plan: the final-step fixpoint did not converge")


def build_cache_plan(src: np.ndarray, pos: np.ndarray, tgt: np.ndarray, mask: np.ndarray,
                     step_of: np.ndarray, read_slots: np.ndarray, num_steps: int) -> CachePlan:
  """The cached schedule of a fixed-group order's layout, in rank space.

  src, pos, tgt: int [L] (ranks >= 0 or SRC_* / -1); mask: bool [L, L] the training mask
  (row sees column); step_of: int [N] the step generating rank r; read_slots: int [N, 2] the
  slots whose outputs predict rank r (second -1 unless the model combines two heads).
  """
  src, pos, tgt = (np.asarray(x, np.int64) for x in (src, pos, tgt))
  mask = np.asarray(mask, bool)
  step_of, read_slots = np.asarray(step_of, np.int64), np.asarray(read_slots, np.int64)
  l, n, k_steps = src.shape[0], step_of.shape[0], int(num_steps)
  avail = np.where(src >= 0, step_of[np.maximum(src, 0)] + 1, 0)
  final = _final_steps(mask, avail)
  outputs: List[set] = [set() for _ in range(k_steps)]
  out_step = np.full(l, -1)
  for r in range(n):
    for s in read_slots[r]:
      if s >= 0:
        outputs[step_of[r]].add(int(s))
        out_step[s] = max(out_step[s], step_of[r])
  # Kept: seen by another slot that is computed (finally, or for its output) at a later step.
  later = np.maximum(final, out_step)
  observed_later = (mask & (later[:, None] > final[None, :])).copy()
  np.fill_diagonal(observed_later, False)
  keep = observed_later.any(0) & (final < k_steps)

  cache_order: List[int] = []       # slots in the cache, in cache-slot order.
  steps = []
  for k in range(k_steps):
    kept = [s for s in range(l) if keep[s] and final[s] == k]
    in_cache = set(cache_order) | set(kept)
    trans: List[int] = []
    frontier = sorted(outputs[k] - set(kept))
    seen = set(frontier) | set(kept)
    frontier = frontier + kept
    while frontier:  # every visible, available slot a fed row needs, not cached: transient.
      s = frontier.pop()
      if s not in in_cache:
        trans.append(s)
      for s2 in np.nonzero(mask[s] & (avail <= k))[0]:
        s2 = int(s2)
        if s2 not in seen and s2 not in in_cache:
          seen.add(s2)
          frontier.append(s2)
    trans.sort()
    for s in trans:
      if keep[s] and final[s] < k:
        raise AssertionError(f"cache plan: slot {s} is cached and needed again at step {k}")
    steps.append((kept, trans, list(cache_order)))
    cache_order += kept

  f = max(len(kp) + len(tr) for kp, tr, _ in steps)
  g = max(1, max(int((step_of == k).sum()) for k in range(k_steps)))
  cache_len = max(len(c) for _, _, c in steps) + f
  plan = dict(src=np.full((k_steps, f), PAD), pos=np.full((k_steps, f), -1),
              tgt=np.full((k_steps, f), -1), num_kept=np.zeros(k_steps), cache_at=np.zeros(k_steps),
              mask=np.zeros((k_steps, f, cache_len), bool), read_a=np.full((k_steps, g), -1),
              read_b=np.full((k_steps, g), -1), target=np.full((k_steps, g), -1))
  for k, (kept, trans, cached) in enumerate(steps):
    fed = kept + trans
    p = len(cached)
    ids = np.full(cache_len, -1)
    ids[:p] = cached
    ids[p:p + len(fed)] = fed
    plan["src"][k, :len(fed)] = src[fed]
    plan["pos"][k, :len(fed)] = pos[fed]
    plan["tgt"][k, :len(fed)] = tgt[fed]
    plan["num_kept"][k], plan["cache_at"][k] = len(kept), p
    valid = ids >= 0
    for i, s in enumerate(fed):
      plan["mask"][k, i] = valid & mask[s, np.maximum(ids, 0)] & (avail[np.maximum(ids, 0)] <= k)
    # Padding rows see cache slot 0 (the class), so no row's softmax runs over nothing.
    plan["mask"][k, len(fed):, 0] = True
    row = {s: i for i, s in enumerate(fed)}
    for j, r in enumerate(np.nonzero(step_of == k)[0]):
      plan["target"][k, j] = r
      a, b = read_slots[r]
      plan["read_a"][k, j] = row[int(a)] if a >= 0 else -1
      plan["read_b"][k, j] = row[int(b)] if b >= 0 else -1
  as32 = {k: (v.astype(np.int32) if v.dtype != bool else v) for k, v in plan.items()}
  return CachePlan(cache_len=int(cache_len), **as32)


def rank_space(cells: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Cells (>= 0) -> their ranks in `perm` [N]; negative codes pass through."""
  inv = np.zeros_like(perm)
  inv[perm] = np.arange(perm.shape[0])
  return np.where(cells >= 0, inv[np.maximum(cells, 0)], cells)


def read_slots_from_targets(tgt: Sequence[int], n: int) -> np.ndarray:
  """[N, 2]: the slot whose target is cell c (one head per prediction), second column -1."""
  out = np.full((n, 2), -1)
  for s, c in enumerate(np.asarray(tgt)):
    if c >= 0:
      if out[c, 0] >= 0:
        raise ValueError(f"cache plan: cell {c} is the target of slots {out[c, 0]} and {s}")
      out[c, 0] = s
  if (out[:, 0] < 0).any():
    raise ValueError(f"cache plan: cells {np.nonzero(out[:, 0] < 0)[0].tolist()} have no slot "
                     "predicting them")
  return out


@dataclasses.dataclass(frozen=True)
class Segment:
  """Steps start ... stop - 1 of a cached run, compiled as one loop with static sizes: `fed`
  rows per step, `targets` predictions per step, a cache of `cache_len` slots."""
  start: int
  stop: int
  fed: int
  targets: int
  cache_len: int


def plan_segments(fed: Sequence[int], targets: Sequence[int], cache_at: Sequence[int], *,
                  slot_cost: float, max_segments: int = 6) -> List[Segment]:
  """Splits K steps into at most `max_segments` contiguous segments, each padded to its own
  largest step instead of the run's (a step's cost grows with the rows it feeds and the cache
  its rows attend over).

  fed, targets, cache_at: int [K] per step: rows fed, predictions, the cache slot of the first
  fed row (non-decreasing). A step of a segment with F rows and S cache slots costs
  F * (slot_cost + S) (slot_cost: the per-row work in units of one key attended, about 6 x the
  width for a Llama block). Exact minimum of that cost, plus a charge per extra segment of 1/50
  of the one-segment cost (a segment is one more compiled loop and one cache copy), by dynamic
  programming over the number of segments. Cache lengths never shrink from one segment to the
  next (the cache is copied into a longer one, never cut).
  """
  fed, targets, at = (np.asarray(x, np.int64) for x in (fed, targets, cache_at))
  k = fed.shape[0]
  if k == 0:
    raise ValueError("cache plan: no steps to segment")

  def costs(j):  # cost of the segments i .. j-1 for every i < j (vectorised over i).
    f = np.maximum.accumulate(fed[:j][::-1])[::-1]
    return f * (slot_cost + at[j - 1] + f) * (j - np.arange(j))

  whole = float(costs(k)[0])
  charge = whole / 50.0
  inf = float("inf")
  best = np.full((max_segments + 1, k + 1), inf)
  arg = np.zeros((max_segments + 1, k + 1), np.int64)
  best[0, 0] = 0.0
  seg_cost = [None] + [costs(j) for j in range(1, k + 1)]
  for m in range(1, max_segments + 1):
    for j in range(1, k + 1):
      c = best[m - 1, :j] + seg_cost[j] + charge
      i = int(np.argmin(c))
      best[m, j], arg[m, j] = c[i], i
  m = int(np.argmin(best[:, k]))
  bounds, j = [], k
  while m > 0:
    i = int(arg[m, j])
    bounds.append((i, j))
    j, m = i, m - 1
  out, s_prev = [], 0
  for i, j in reversed(bounds):
    f, g = int(fed[i:j].max()), int(targets[i:j].max())
    s = max(s_prev, int(at[j - 1]) + f)
    out.append(Segment(i, j, max(f, 1), max(g, 1), s))
    s_prev = s
  return out
