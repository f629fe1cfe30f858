"""'cached_order': KV-cached sampling of every fixed-group order whose layout one transformer
reads (RandAR, LPD, PAR, NAR; also 'random' / 'raster' on ordered_ar).

The 'order' sampler recomputes the whole layout at every step. This one feeds each slot of the
layout when its hidden state can no longer change, and keeps it in the KV cache for the slots
fed later; the schedule is worked out once on the host (`arjax.orders.cache_plan`), in rank
space, so one table serves every sample's permutation:

  RandAR  step k feeds [P and x of step k-1's group, re-fed now that their tokens are known |
          P of step k's group]; the earlier slots enter the cache, the step's queries P see each
          other causally and are overwritten by the next step (RandAR's parallel decoding).
  LPD     step k feeds [content of group k-1 | queries of group k]: the content enters the cache;
          the queries read it and never enter the valid part of the cache.
  PAR     step k feeds the block of slots whose cells became known (the class, one initial
          token, then [last initial token, the transition queries], then each group).
  NAR     step c feeds anti-diagonal c - 1; its right / lower heads predict diagonal c.

One jitted function over the shared `SamplerState`: a `lax.fori_loop` per segment of steps
(`cache_plan.plan_segments`, at most 6), each padded to its own largest step (F rows, G targets)
and attending over a cache only as long as its prefix needs (S slots; the cache is copied into a
longer one between segments), so a step's cost follows its own size rather than the largest
step's and the full cache length. The cache's write positions are the per-row `state.position`
(int32 [B]; rows advance together here). The draw and the reveal are
`Sampler.reveal_step` with the order's rule, each cell drawn with its own key, so the tokens equal
the 'order' sampler's for the same key (tests/sampling/test_cached_orders.py). Masked (MaskGIT)
orders stay on 'order', already one compiled step; ARPG's two-pass decoder has 'cached_groups';
inpainting (`known`) goes through 'order'.

A model provides `cached_order_support()`, `cache_layout()`, `init_slot_cache(batch, length)`,
`decode_slots(tokens, labels, src, pos, tgt, mask, cache, index)` -> (outputs, cache) and
`read_targets(outputs, read_a, read_b)` -> Distribution [B, G] (arjax.models.ordered_ar, nar).

Legend: B batch, N tokens, K steps, F fed slots per step, G targets per step, S cache slots.
"""
from __future__ import annotations

from typing import List, Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.kernels.masks import MaskSpec
from arjax.orders import SRC_CLASS
from arjax.orders.cache_plan import PAD, CachePlan, Segment, build_cache_plan, plan_segments
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState, scatter_cells


def cache_plan_of(model) -> CachePlan:
  """The host schedule of `model`'s order (see arjax.orders.cache_plan)."""
  src, pos, tgt, mask, step_of, read = model.cache_layout()
  return build_cache_plan(src, pos, tgt, mask, step_of, read, model.order.num_steps())


def segments_of(cp: CachePlan, width: int, max_segments: int = 6) -> List[Segment]:
  """The plan's steps split into segments padded to their own sizes (cache_plan.plan_segments;
  per-row work ~ 6 x width keys: the projections and MLP of a Llama block)."""
  return plan_segments((cp.src != PAD).sum(1), (cp.target >= 0).sum(1), cp.cache_at,
                       slot_cost=6 * width, max_segments=max_segments)


def grow_cache(cache, longer):
  """Copies every leaf of `cache` into the start of the same leaf of `longer` (any layout: the
  leaves differ only in their cache-slot axis)."""
  return jax.tree.map(lambda new, old: jax.lax.dynamic_update_slice(
      new, old.astype(new.dtype), (0,) * old.ndim), longer, cache)


def _to_cells(ranks, perm):
  """ranks int32 [F] or [G] (>= 0, or SRC_* / -1 codes) -> cells [B, F] through perm [B, N]."""
  b = perm.shape[0]
  cells = jnp.take(perm, jnp.maximum(ranks, 0), axis=1)
  return jnp.where(ranks[None] >= 0, cells, jnp.broadcast_to(ranks, (b,) + ranks.shape))


@SAMPLERS.register("cached_order")
class CachedOrderSampler(Sampler):
  """Samples class-conditional tokens of a fixed-group order with a KV cache (see above)."""

  name = "cached_order"
  max_segments = 6  # compiled loops per run at most (1: every step padded to the largest).

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    model = fm.bind(fm.abstract_params)
    self.plan = cache_plan_of(model)
    self.segments = segments_of(self.plan, model.backbone_cfg.dim, self.max_segments)
    self._run = jax.jit(self._sample, static_argnames=("collect",))

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "cached_order_support"):
      return "it does not decode a fixed-group order's slots from a cache (decode_slots)"
    return model.cached_order_support()

  def cache_bytes(self, batch: int) -> int:
    """Bytes of the KV cache arrays a batch of `batch` images holds (doubled under CFG)."""
    model = self.fm.bind(self.fm.abstract_params)
    bb = batch * (2 if self.use_cfg else 1)
    shapes = jax.eval_shape(lambda: model.init_slot_cache(bb, self.segments[-1].cache_len))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))

  def _sample(self, params, labels, rng, collect: bool = False):
    model = self.fm.bind(params)
    order, cp = model.order, self.plan
    b, n = labels.shape[0], model.num_tokens
    g = self.guidance
    feed_labels = g.feed_labels(labels, model.null_class)
    bb = feed_labels.shape[0]
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b)
    perm = plan.perm
    num_steps = cp.num_steps
    segs = self.segments
    state = SamplerState.create(self.token_buffer(model, b, n), jnp.zeros((b, n), bool), rng,
                                cache=model.init_slot_cache(bb, segs[0].cache_len))

    def run_segment(seg, state):
      # The segment's tables, cut to its own sizes: F fed rows, G targets, S cache slots.
      f, gt, s = seg.fed, seg.targets, seg.cache_len
      rows = slice(seg.start, seg.stop)
      t = {k: jnp.asarray(getattr(cp, k)[rows, :f]) for k in ("src", "pos", "tgt")}
      t["mask"] = jnp.asarray(cp.mask[rows, :f, :s])
      t.update({k: jnp.asarray(getattr(cp, k)[rows, :gt]) for k in ("read_a", "read_b", "target")})
      t["num_kept"] = jnp.asarray(cp.num_kept[rows])

      def step(k, state):  # k: the step's index within the segment.
        src_r = t["src"][k]
        src = _to_cells(jnp.where(src_r == PAD, SRC_CLASS, src_r), perm)       # [B, F]
        pos, tgt = _to_cells(t["pos"][k], perm), _to_cells(t["tgt"][k], perm)
        slot_tokens = jnp.take_along_axis(
            state.tokens, jnp.maximum(src, 0).reshape(src.shape + (1,) * (state.tokens.ndim - 2)),
            axis=1)
        mask = MaskSpec(kind="dense", dense=t["mask"][k][None, None])
        out, cache = model.decode_slots(g.double(slot_tokens), feed_labels, g.double(src),
                                        g.double(pos), g.double(tgt), mask, state.cache,
                                        g.double(state.position))
        dist = model.read_targets(out, t["read_a"][k], t["read_b"][k])          # [B', G]
        cells = _to_cells(t["target"][k], perm)                                 # [B, G], -1 pad
        state = self.reveal_step(state, dist, order, plan, num_steps,
                                 to_grid=lambda x: scatter_cells(x, cells, n), cells=cells)
        state = state.replace(cache=cache, position=state.position + t["num_kept"][k])
        return state, (dist, cells)

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
                                               model.init_slot_cache(bb, seg.cache_len)))
      state, d = run_segment(seg, state)
      dists.append(d)
    if not collect:
      return state.tokens
    return state.tokens, jax.tree.map(lambda *x: jnp.concatenate(x, 0), *dists)

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens [B, N, *T]; with `known` / `given` (inpainting), the
    recomputing 'order' sampler (same plan, same guidance, same draws)."""
    if known is not None:
      return SAMPLERS.get("order")(self.fm, self.sampling, self.guidance).sample_tokens(
          params, labels, rng, known=known, given=given)
    return self._run(params, labels, rng)

  def step_distributions(self, params, labels, rng):
    """(tokens [B, N, *T], the model's unguided Distribution of every step's targets on the
    grid, leaves [K, B', N, ...], zeros at cells the step does not predict): what a
    recomputation at each step is compared with."""
    return self._run(params, labels, rng, collect=True)
