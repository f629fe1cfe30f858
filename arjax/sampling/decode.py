"""'sequential': KV-cached next-cell decoding in one jitted `lax.fori_loop`, cache donated.

Step 0 feeds the class token (cache slot 0) and samples x_0; step i >= 1 feeds x_{i-1} at slot
i and samples x_i. With CFG the batch is doubled (conditional, null class) and the head's
distributions combined (`GuidanceSchedule.guide`, any schedule) before sampling; both halves
are fed the same sampled token. Tokens are the head's: int32 [B, N] or float [B, N, C] (GIVT).

A model provides `init_cache(batch)`, `decode_prefix(labels, caches)` -> (Distribution [B, 1],
caches) and `decode_tokens(tokens [B, T, *T'], index, caches)` -> (Distribution [B, T], caches)
(arjax.models.raster_ar, ordered_ar).

Legend: B batch, N tokens per image, V vocabulary, C latent channels.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState

__all__ = ["SamplingConfig", "SequentialSampler", "class_grid_labels"]


def raster_like(order) -> bool:
  """Orders sampled one cell per step in raster order (raster; random with sampling in raster
  order, RAR after annealing)."""
  return order is not None and (order.name == "raster" or (
      order.name == "random" and not getattr(order, "sample_random", True)))


@SAMPLERS.register("sequential")
class SequentialSampler(Sampler):
  """Samples class-conditional token sequences from a raster (next-token) model."""

  name = "sequential"

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    self._run = jax.jit(self._decode, donate_argnames=("caches",))
    # One jitted cache constructor per sampler (a fresh jax.jit per call retraced every time).
    self._init = jax.jit(lambda p, rows: self.fm.bind(p).init_cache(rows), static_argnums=1)

  @classmethod
  def cannot_run(cls, model):
    if not (hasattr(model, "decode_tokens") and getattr(model, "supports_cached_raster", True)):
      return "it has no KV-cached next-token decoding (decode_prefix / decode_tokens)"
    if not raster_like(getattr(model, "order", None)):
      return "the order does not generate one cell per step in raster order"
    return None

  def init_caches(self, params, batch: int):
    return self._init(params, 2 * batch if self.use_cfg else batch)

  def _decode(self, params, labels, caches, rng):
    model = self.fm.bind(params)
    order = model.order
    n = model.tokenizer.tokens_per_image
    b = labels.shape[0]
    g = self.guidance
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b)
    dist, caches = model.decode_prefix(g.feed_labels(labels, model.null_class), caches)
    state = SamplerState.create(self.token_buffer(model, b, n), jnp.zeros((b, n), bool), rng,
                                cache=caches, position=jnp.ones((b,), jnp.int32))
    # The distribution of cell `step` sits at position 0; it goes to that cell of the grid.
    to_grid = lambda x: jnp.broadcast_to(x[:, :1], (b, n) + x.shape[2:])
    step = lambda state, dist: self.reveal_step(state, dist, order, plan, n, to_grid=to_grid)
    state = step(state, dist)

    def body(i, state):
      prev = jax.lax.dynamic_slice_in_dim(state.tokens, i, 1, axis=1)
      # The backbone takes one scalar write index today; state.position holds it per row.
      dist, caches = model.decode_tokens(g.double(prev), i, state.cache)
      return step(state.replace(cache=caches, position=state.position + 1), dist)

    # Returning the caches lets XLA alias the donated input buffers, so the loop updates the
    # cache in place instead of allocating a second copy.
    state = jax.lax.fori_loop(0, n - 1, body, state)
    return state.tokens, state.cache

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B], rng key -> tokens [B, N, *T] of the head's dtype."""
    if known is not None:
      raise ValueError("sampler 'sequential' does not inpaint (known/given); use sampler 'order'")
    caches = self.init_caches(params, labels.shape[0])
    tokens, _ = self._run(params, labels, caches, rng)
    return tokens


def class_grid_labels(num_classes: int, per_class: int):
  """int32 [num_classes * per_class]: each class repeated `per_class` times (grid rows)."""
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)
