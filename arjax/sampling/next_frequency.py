"""'next_frequency': FAR's level-by-level sampling (Yu et al. 2025; sample_tokens_nomask of
yuhuUSTC/FAR models/far.py).

S = len(model.sample_levels) steps over the levels k_0 = 0 < k_1 < ... < k_{S-1} < G. Step s:

  1. input  L_{k_s}(x_{s-1}) (arjax.models.far.FAR.level_input: area to k_s x k_s, bicubic back
     to G x G; zeros at s = 0 where k_0 = 0) at level k_s;
  2. guidance: the batch is doubled (conditional rows first, the null class second) and the
     head's guided distribution is drawn with scale 1 + (w - 1) s / S (FAR's linear ramp; the
     schedule's kind is eval.cfg_schedule, its progress here s / S);
  3. the whole latent x_s [B, N, C] is drawn with key fold_in(rng, s) at temperature
     tau_s = tau_0 + (tau - tau_0)(1 - cos(pi/2 (s + 1) / S)), tau_0 = model.temperature_start
     (FAR: 0.8), tau = sampling.temperature (FAR: 1.0).

x_{S-1} is the sample. The S steps are unrolled in one jit (each level a static matrix).

Legend: B batch, N tokens, C channels, G grid side, S steps.
"""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.heads.diffusion import check_temperature
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule


def level_temperature(tau0: float, tau: float, step: int, num_steps: int) -> float:
  """FAR's temperature at step s: tau_0 + (tau - tau_0)(1 - cos(pi/2 (s + 1) / S))."""
  return tau0 + (tau - tau0) * (1.0 - math.cos(math.pi / 2.0 * (step + 1) / num_steps))


@SAMPLERS.register("next_frequency")
class NextFrequencySampler(Sampler):
  """Samples continuous tokens frequency level by level (see the module docstring)."""

  name = "next_frequency"

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    check_temperature("next_frequency", sampling.temperature)
    self._run = jax.jit(self._sample)

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "level_dist"):
      return "it has no frequency levels (level_dist)"
    return None

  def _sample(self, params, labels, rng):
    """labels int32 [B] -> tokens float32 [B, N, C]."""
    model = self.fm.bind(params)
    g = self.guidance
    levels = model.sample_levels
    steps = len(levels)
    b = labels.shape[0]
    feed = g.feed_labels(labels, model.null_class)
    x = jnp.zeros((b, model.num_tokens, model.channels), jnp.float32)
    for s, k in enumerate(levels):
      inputs = model.level_input(x, k) if k > 0 else jnp.zeros_like(x)
      dist = g.guide(model.level_dist(g.double(inputs), feed, k), s / steps)
      tau = level_temperature(model.temperature_start, self.sampling.temperature, s, steps)
      x = dist.sample(jax.random.fold_in(rng, s), temperature=tau, **self.options)
    return x

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens float32 [B, N, C] (raster order)."""
    if known is not None or given is not None:
      raise ValueError("sampler 'next_frequency' does not take an inpainting mask (known / given)")
    return self._run(params, jnp.asarray(labels, jnp.int32), rng)
