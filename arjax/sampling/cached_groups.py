"""'cached_groups': KV-cached parallel group decoding for models with separate target queries
(ARPG).

The 'order' sampler recomputes the whole layout at every step. ARPG's queries never see each
other, so its decoder only needs the content generated so far (Li et al. 2025): step k runs one
forward pass over [the tokens of group k - 1 (step 0: the class) through Pass 1, appended to the
cache | the queries of group k through Pass 2, reading the cache], as ARPG computes a step's
sampled tokens' K/V in the next step's pass; the last group's tokens are never fed. It reveals
the targets (the order's rule) and loops. One jitted function: `lax.fori_loop`s over the shared
sampler state, one per segment of steps (`arjax.orders.cache_plan.plan_segments`), each padded
to its own largest group and reading a cache only as long as its prefix (padded queries are
dropped, padded content slots are hidden and overwritten by the next step).

A model provides `init_group_cache(batch, length)`, `feed_content(tokens, labels, src, cache,
slot0)` and `predict_group(cells, cache, kv_length)` -> Distribution [B, G] (arjax.models.arpg).
Inpainting goes through the 'order' sampler.

Legend: B batch, N tokens, K steps, C content slots fed per step, G queries per step,
V vocabulary.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from arjax.core.functional import FunctionalModel
from arjax.orders import SRC_CLASS
from arjax.orders.cache_plan import plan_segments
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.cached_orders import grow_cache
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState, scatter_cells


@SAMPLERS.register("cached_groups")
class CachedGroupSampler(Sampler):
  """Samples class-conditional tokens in the order's groups with a KV cache (see above)."""

  name = "cached_groups"
  max_segments = 6  # compiled loops per run at most (1: every step padded to the largest).

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    self._run = jax.jit(self._sample, static_argnames=("collect",))

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "predict_group"):
      return "it has no target queries to decode from a cache (predict_group)"
    return None

  def group_tables(self, model):
    """Host tables of the steps, in rank space (numpy): content int [K, C] (the rank each fed
    content slot carries, SRC_CLASS at step 0, -1 padding), content_at int [K] (its first cache
    slot), queries int [K, G] (target ranks, -1 padding), and the segments."""
    cum = np.asarray([0] + list(model.order.cumulative), np.int64)
    sizes = np.diff(cum)
    k_steps = sizes.shape[0]
    c_max, g_max = int(max(1, sizes[:-1].max(initial=1))), int(sizes.max())
    content = np.full((k_steps, c_max), -1)
    queries = np.full((k_steps, g_max), -1)
    content[0, 0] = SRC_CLASS
    fed = np.ones(k_steps, np.int64)
    for k in range(k_steps):
      queries[k, :sizes[k]] = np.arange(cum[k], cum[k + 1])
      if k:
        content[k, :sizes[k - 1]] = np.arange(cum[k - 1], cum[k])
        fed[k] = sizes[k - 1]
    content_at = np.concatenate([[0], 1 + cum[:-2]])
    # A step feeds C content rows (Pass 1) and G queries (Pass 2) of half the depth each: cost
    # as max(C, G) rows; the cache it needs ends after its content rows.
    segs = plan_segments(np.maximum(fed, sizes), sizes, content_at,
                         slot_cost=6 * model.backbone_cfg.dim, max_segments=self.max_segments)
    return content, content_at, queries, fed, segs

  def _sample(self, params, labels, rng, collect: bool = False):
    model = self.fm.bind(params)
    order = model.order
    b, n = labels.shape[0], model.num_tokens
    content, content_at, queries, fed, segs = self.group_tables(model)
    num_steps = content.shape[0]
    g = self.guidance
    feed_labels = g.feed_labels(labels, model.null_class)
    bb = feed_labels.shape[0]
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b)
    perm = plan.perm
    # Fed slots of the segment (C rows: its largest previous group) and its queries (G rows).
    c_of = lambda seg: int(fed[seg.start:seg.stop].max())
    state = SamplerState.create(self.token_buffer(model, b, n), jnp.zeros((b, n), bool), rng,
                                cache=model.init_group_cache(bb, segs[0].cache_len))

    def run_segment(seg, state):
      rows = slice(seg.start, seg.stop)
      t_content = jnp.asarray(content[rows, :c_of(seg)], jnp.int32)
      t_queries = jnp.asarray(queries[rows, :seg.targets], jnp.int32)
      t_at = jnp.asarray(content_at[rows], jnp.int32)
      t_fed = jnp.asarray(fed[rows], jnp.int32)

      def step(k, state):
        ranks = t_content[k]
        src = jnp.where(ranks[None] >= 0, jnp.take(perm, jnp.maximum(ranks, 0), axis=1),
                        jnp.broadcast_to(ranks, (b,) + ranks.shape))               # [B, C]
        at = t_at[k]
        cache = model.feed_content(g.double(state.tokens), feed_labels, g.double(src),
                                   state.cache, at)
        q = t_queries[k]
        cells = jnp.take(perm, jnp.maximum(q, 0), axis=1)                          # [B, G]
        dist = model.predict_group(g.double(cells), cache, at + t_fed[k])          # [B', G]
        cells = jnp.where(q[None] >= 0, cells, -1)                                 # drop padding.
        state = self.reveal_step(state, dist, order, plan, num_steps,
                                 to_grid=lambda x: scatter_cells(x, cells, n), cells=cells)
        return state.replace(cache=cache, position=state.position + t_fed[k]), (dist, cells)

      length = seg.stop - seg.start
      if not collect:
        return jax.lax.fori_loop(0, length, lambda k, st: step(k, st)[0], state), None

      def scan_body(state, k):
        state, (dist, cells) = step(k, state)
        return state, jax.tree.map(lambda x: scatter_cells(x, g.double(cells), n), dist)

      return jax.lax.scan(scan_body, state, jnp.arange(length))

    dists = []
    for i, seg in enumerate(segs):
      if i and seg.cache_len > segs[i - 1].cache_len:  # a longer cache for the longer prefix.
        state = state.replace(cache=grow_cache(state.cache,
                                               model.init_group_cache(bb, seg.cache_len)))
      state, d = run_segment(seg, state)
      dists.append(d)
    if not collect:
      return state.tokens
    return state.tokens, jax.tree.map(lambda *x: jnp.concatenate(x, 0), *dists)

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens [B, N, *T]; with `known` / `given` (inpainting), the
    recomputing 'order' sampler (same plan, same guidance)."""
    if known is not None:
      return SAMPLERS.get("order")(self.fm, self.sampling, self.guidance).sample_tokens(
          params, labels, rng, known=known, given=given)
    return self._run(params, labels, rng)

  def step_distributions(self, params, labels, rng):
    """(tokens [B, N, *T], the model's unguided Distribution of every step's targets on the
    grid, leaves [K, B', N, ...], zeros at cells the step does not predict)."""
    return self._run(params, labels, rng, collect=True)

  def cache_bytes(self, batch: int) -> int:
    """Bytes of the KV cache arrays a batch of `batch` images holds (doubled under CFG)."""
    model = self.fm.bind(self.fm.abstract_params)
    bb = batch * (2 if self.use_cfg else 1)
    length = self.group_tables(model)[-1][-1].cache_len
    shapes = jax.eval_shape(lambda: model.init_group_cache(bb, length))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
