"""'himar': Hi-MAR's two-phase masked sampling (HiDream-ai/himar models/himar.py sample_tokens).

  phase 1  K1 = model.pivot_steps steps over the Np pivots: at step k, z1 of every pivot from
           the layout of the known pivots (model.phase1); the pivot head (MAR's MLP diffusion)
           draws every pivot and the step keeps the cells it reveals; the z1 of those cells is
           stored (it conditions phase 2). CFG scale 1 + (w1 - 1) (Np - M_k) / Np, w1 =
           model.pivot_cfg, M_k the pivots still masked after the step.
  phase 2  K2 = model.grid_steps steps over the N grid tokens, pivot slots = cond_z_proj(z1)
           (the conditional z1 in both CFG halves, as the official code): the global head
           draws the whole grid jointly, known cells replaced by their noised values at every
           diffusion step; the step keeps the cells it reveals. CFG 1 + (w - 1)(N - M_k)/N,
           w = sampling.cfg_scale.

M_k = max(1, min(masked - 1, floor(n cos(pi/2 (k+1)/K)))) and 0 at the last step (MAR's cosine
count); the cells revealed are the next ones of one random order per row and phase (the
official orders). Keys: the order of phase q from fold_in(rng, 100 + q), the head draw of step
k of phase q from fold_in(rng, 1000 q + k). The CFG halves: rows [cond; uncond] with the null
class. The loop is unrolled inside one jit (K1 + K2 compiled steps of static shapes).

Legend: B batch, N grid tokens, Np pivots, C channels.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.orders.schedules import cosine_masked_counts
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule


def random_ranks(key, b: int, n: int):
  """int32 [B, n]: each cell's place in a random order per row."""
  return jnp.argsort(jnp.argsort(jax.random.uniform(key, (b, n)), 1), 1).astype(jnp.int32)


def two_phase_sample(model, labels, rng, cfg: float, temperature: float = 1.0):
  """labels int32 [B] -> (pivots float32 [B, Np, C], tokens float32 [B, N, C])."""
  f = model.fields
  b = labels.shape[0]
  np_, n, c = model.num_pivots, model.num_tokens, model.channels
  null = jnp.full_like(labels, model.null_class)

  def guided(dist_fn, scale, guide):
    if not guide:
      return dist_fn(labels)
    both = dist_fn(jnp.concatenate([labels, null]))
    half = lambda d, i: jax.tree.map(lambda x: x[i * b:(i + 1) * b], d)
    return half(both, 0).guide(half(both, 1), scale)

  # Phase 1: the pivots.
  rank = random_ranks(jax.random.fold_in(rng, 100), b, np_)
  pivots = jnp.zeros((b, np_, c), jnp.float32)
  known = jnp.zeros((b, np_), bool)
  z1 = jnp.zeros((b, np_, model.dec_dim), jnp.float32)
  w1 = float(f.pivot_cfg)
  for k, m in enumerate(cosine_masked_counts(np_, f.pivot_steps)):
    reveal = (rank >= m) & ~known
    if w1 != 1.0:
      z = model.phase1(jnp.concatenate([pivots, pivots]), jnp.concatenate([labels, null]),
                       jnp.concatenate([known, known]))
      zc = z[:b]
      dist = model.head(z[:b]).guide(model.head(z[b:]), 1 + (w1 - 1) * (np_ - m) / np_)
    else:
      zc = model.phase1(pivots, labels, known)
      dist = model.head(zc)
    draw = dist.sample(jax.random.fold_in(rng, k), temperature=temperature)
    pivots = jnp.where(reveal[..., None], draw, pivots)
    z1 = jnp.where(reveal[..., None], zc, z1)
    known = known | reveal

  # Phase 2: the grid, conditioned on the pivots' z1.
  slots = model.pivot_z_slots(z1)
  rank = random_ranks(jax.random.fold_in(rng, 101), b, n)
  tokens = jnp.zeros((b, n, c), jnp.float32)
  known = jnp.zeros((b, n), bool)
  w = float(cfg)
  for k, m in enumerate(cosine_masked_counts(n, f.grid_steps)):
    reveal = (rank >= m) & ~known
    if w != 1.0:
      z = model.phase2(jnp.concatenate([slots, slots]), jnp.concatenate([tokens, tokens]),
                       jnp.concatenate([labels, null]), jnp.concatenate([known, known]))
      dist = model.global_head(z[:b]).guide(model.global_head(z[b:]), 1 + (w - 1) * (n - m) / n)
    else:
      dist = model.global_head(model.phase2(slots, tokens, labels, known))
    draw = dist.sample(jax.random.fold_in(rng, 1000 + k), temperature=temperature,
                       known=tokens, known_mask=known)
    tokens = jnp.where(reveal[..., None], draw, tokens)
    known = known | reveal
  return pivots, tokens


@SAMPLERS.register("himar")
class TwoPhaseSampler(Sampler):
  """Hi-MAR's pivots-then-grid sampling (see the module docstring)."""

  name = "himar"
  counts_revealed = True

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    # The loop ramps CFG linearly over the revealed tokens (Hi-MAR's rule) and has no other
    # schedule; 'constant' is accepted only where it means no guidance (scale 1).
    linear = self.guidance.kind == "linear"
    if not (linear or (self.guidance.kind == "constant" and self.sampling.cfg_scale == 1.0)):
      raise ValueError(f"sampler 'himar' applies Hi-MAR's linear CFG over the revealed tokens; "
                       f"eval.cfg_schedule={self.guidance.kind!r} is not supported with "
                       f"eval.cfg_scale={self.sampling.cfg_scale} (set eval.cfg_schedule='linear')")
    self._run = jax.jit(self._sample)

  @classmethod
  def cannot_run(cls, model):
    if not (hasattr(model, "phase1") and hasattr(model, "global_head")):
      return "it is not a two-phase pivot model (phase1 / phase2 / global_head)"
    return None

  def _sample(self, params, labels, rng):
    model = self.fm.bind(params)
    return two_phase_sample(model, labels, rng, self.sampling.cfg_scale,
                            self.sampling.temperature)

  def sample_pivots_and_tokens(self, params, labels, rng):
    """-> (pivots [B, Np, C], tokens [B, N, C])."""
    self.check_inputs(labels, rng)
    return self._run(params, labels, rng)

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    if known is not None or given is not None:
      raise ValueError("sampler 'himar' does not inpaint: pass known=None, given=None")
    return self.sample_pivots_and_tokens(params, labels, rng)[1]
