"""'cached_groups': KV-cached parallel group decoding for models with separate target queries
(ARPG).

The 'order' sampler recomputes the whole layout at every step. ARPG's queries never see each
other, so its decoder only needs the content generated so far (Li et al. 2025): this sampler
feeds the class once, then at step k predicts the G_k targets of the order's group k from the
cache, reveals them (the order's rule) and appends their tokens to the cache. One jitted
`lax.fori_loop` over the shared sampler state; groups are padded to the largest group G (padded
queries are dropped, padded content slots are overwritten by the next step), so the cache holds
N + G slots.

A model provides `init_group_cache(batch, length)`, `feed_content(tokens, labels, src, cache,
slot0)` and `predict_group(cells, cache, kv_length)` -> Distribution [B, G] (arjax.models.arpg).
Inpainting goes through the 'order' sampler.

Legend: B batch, N tokens, G largest group, V vocabulary.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from arjax.core.functional import FunctionalModel
from arjax.orders import SRC_CLASS
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState, scatter_cells


@SAMPLERS.register("cached_groups")
class CachedGroupSampler(Sampler):
  """Samples class-conditional tokens in the order's groups with a KV cache (see above)."""

  name = "cached_groups"

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    self._run = jax.jit(self._sample)

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "predict_group"):
      return "it has no target queries to decode from a cache (predict_group)"
    return None

  def _sample(self, params, labels, rng):
    model = self.fm.bind(params)
    order = model.order
    b, n = labels.shape[0], model.num_tokens
    cum = np.asarray([0] + list(order.cumulative), np.int32)
    g_max = int(np.diff(cum).max())
    g = self.guidance
    feed_labels = g.feed_labels(labels, model.null_class)
    bb = feed_labels.shape[0]
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b)
    perm = jnp.concatenate([plan.perm, jnp.broadcast_to(plan.perm[:, :1], (b, g_max))], 1)
    starts, sizes = jnp.asarray(cum[:-1]), jnp.asarray(np.diff(cum))
    num_steps = len(cum) - 1
    slot = jnp.arange(g_max)
    state = SamplerState.create(self.token_buffer(model, b, n), jnp.zeros((b, n), bool), rng,
                                cache=model.init_group_cache(bb, n + g_max + 1))
    cache = model.feed_content(g.double(state.tokens), feed_labels,
                               jnp.full((bb, 1), SRC_CLASS, jnp.int32), state.cache, 0)
    state = state.replace(cache=cache, position=state.position + 1)

    def body(k, state):
      a, size = starts[k], sizes[k]
      cells = jax.lax.dynamic_slice_in_dim(perm, a, g_max, axis=1)             # [B, G]
      dist = model.predict_group(g.double(cells), state.cache, a + 1)         # [B', G]
      cells = jnp.where(slot[None] < size, cells, -1)                        # drop the padding.
      state = self.reveal_step(state, dist, order, plan, num_steps,
                               to_grid=lambda x: scatter_cells(x, cells, n), cells=cells)
      # Append this step's tokens (content slots 1 + a ... a + size) for the next steps.
      cache = model.feed_content(g.double(state.tokens), feed_labels, g.double(cells),
                                 state.cache, a + 1)
      return state.replace(cache=cache, position=state.position + size)

    state = jax.lax.fori_loop(0, num_steps, body, state)
    return state.tokens

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens [B, N, *T]; with `known` / `given` (inpainting), the
    recomputing 'order' sampler (same plan, same guidance)."""
    if known is not None:
      return SAMPLERS.get("order")(self.fm, self.sampling, self.guidance).sample_tokens(
          params, labels, rng, known=known, given=given)
    return self._run(params, labels, rng)
