"""'next_entity': KV-cached entity-by-entity flow sampling (xAR, Ren et al. 2025;
sample_tokens and sampler.py of OliverRensu/xAR).

E passes for E entities (arjax.models.xar.EntityLayout). For entity k:

  1. its G_k slots start from x_0 = temperature * eps (eps from fold_in(key, k)) and are
     integrated from t = 0 to 1 with the flow head's solver (`arjax.heads.flow.integrate`: Euler
     or Heun on the uniform grid, `model.head.num_sampling_steps` steps); every velocity is one
     pass of the whole network over the entity's slots against the cache (the pass overwrites
     the entity's own cache slots, which step 3 replaces by the clean ones);
  2. guidance: the batch is doubled (conditional rows first, the null class second) and the
     velocity is v_u + w (v_c - v_u) at every ODE step, w from the guidance schedule at the
     entity's progress (xAR's ramp 1 + (w - 1) k / (E - 1) is eval.cfg_schedule='linear' with
     eval.cfg_by='steps');
  3. the drawn tokens are fed clean (flow time t = 1, the data end) at their slots, which
     writes their keys and values into the cache (`decode_entity`) for the later entities (the
     official code feeds them together with the next entity's first step: the same keys and
     values, since the block-causal mask keeps the next entity out of them; after the last
     entity this pass is spare).

With `model.sde=True` step 1 is the official Euler-Maruyama sampler instead (sampler.py's
euler_maruyama_sampler), written in the official time s = 1 - t (s = 1 noise, 0 data) with its
velocity u = -v: on the grid s_i = linspace(1, 0.04, S) then 0, the drift of the reverse SDE
with diffusion 2 s is d = u - s * score = (2 - s) u + x (the linear path's score
-((1 - s) u + x) / s), and

    x <- x + d (s_{i+1} - s_i) + sqrt(2 s_i |s_{i+1} - s_i|) z_i,    z_i from fold_in(key_k, i + 1)

for the first S - 1 steps, then one deterministic step to s = 0 (S network passes). CFG on the
velocity equals the official CFG on the drift (d is affine in u with the same x).

Entities of one size (cell, subsample) run as one traced step in a `lax.fori_loop` (compile time
independent of E); scale entities differ in size, so their loop is unrolled inside the jit. The
ODE / SDE loop is a `lax.fori_loop`. The tokens come back on the grid in raster order
(`EntityLayout.to_grid`).

Legend: B batch, N tokens, S slots, E entities, G slots of one entity, C token channels.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.heads.diffusion import check_temperature
from arjax.heads.flow import integrate
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule


def euler_maruyama(velocity, x0, num_steps: int, key):
  """xAR's Euler-Maruyama sampler (see the module docstring): velocity(x, t) in the library's
  time t (0 noise, 1 data), x0 [B, G, C] the noise at s = 1 -> the sample at s = 0."""
  grid = jnp.concatenate([jnp.linspace(1.0, 0.04, num_steps, dtype=jnp.float32),
                          jnp.zeros((1,), jnp.float32)])

  def drift(x, s):
    return (2.0 - s) * -velocity(x, 1.0 - s) + x

  def body(i, x):
    s, s_next = grid[i], grid[i + 1]
    dt = s_next - s
    z = jax.random.normal(jax.random.fold_in(key, i + 1), x.shape, jnp.float32)
    return x + drift(x, s) * dt + jnp.sqrt(2.0 * s * jnp.abs(dt)) * z

  x = jax.lax.fori_loop(0, num_steps - 1, body, x0)
  s = grid[num_steps - 1]
  return x + drift(x, s) * (0.0 - s)


@SAMPLERS.register("next_entity")
class NextEntitySampler(Sampler):
  """Samples continuous tokens entity by entity (see the module docstring)."""

  name = "next_entity"

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    check_temperature("flow", sampling.temperature)
    self._run = jax.jit(self._sample)

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "decode_entity"):
      return "it has no next-entity decoding (decode_entity)"
    return None

  def _sample(self, params, labels, rng):
    """labels int32 [B] -> tokens float32 [B, N, C]."""
    model = self.fm.bind(params)
    lay, flow, g = model.layout, model.flow, self.guidance
    b, c = labels.shape[0], model.channels
    feed = g.feed_labels(labels, model.null_class)

    def entity(k, size, start, slots, caches):
      """Draws entity k (G = size slots from `start`; k and start static or traced), writes it
      into slots [B, S, C] and feeds it clean (t = 1) into the caches for the next entities."""
      scale = g.at(g.progress(start, lay.num_slots, k, lay.num_entities))

      def velocity(x, t):
        v, _ = model.decode_entity(k, g.double(x), t, feed, caches)
        if not g.enabled:
          return v
        v_c, v_u = v[:b], v[b:]
        return v_u + scale * (v_c - v_u)

      key = jax.random.fold_in(rng, k)
      x0 = self.sampling.temperature * jax.random.normal(key, (b, size, c), jnp.float32)
      if model.sde:
        x = euler_maruyama(velocity, x0, flow.num_sampling_steps, key)
      else:
        x = integrate(velocity, x0, flow.num_sampling_steps, flow.solver)
      _, caches = model.decode_entity(k, g.double(x), 1.0, feed, caches)
      return jax.lax.dynamic_update_slice_in_dim(slots, x, start, 1), caches

    slots = jnp.zeros((b, lay.num_slots, c), jnp.float32)
    caches = model.init_cache(feed.shape[0])
    if model.equal_entities:  # one traced entity step in a loop: compile time independent of E.
      size = lay.bounds[0][1]
      slots, caches = jax.lax.fori_loop(
          0, lay.num_entities, lambda k, sc: entity(k, size, k * size, *sc), (slots, caches))
    else:                     # scale entities: one unrolled step per entity size.
      for k, (a, e) in enumerate(lay.bounds):
        slots, caches = entity(k, e - a, a, slots, caches)
    return lay.to_grid(slots)

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens float32 [B, N, C] (raster order)."""
    if known is not None or given is not None:
      raise ValueError("sampler 'next_entity' does not take an inpainting mask (known / given)")
    return self._run(params, jnp.asarray(labels, jnp.int32), rng)
