"""'order': the order-driven sampler for any order (parallel groups, confidence, inpainting).

It runs any model with `grid_dist(tokens, labels, known, plan)` (a head Distribution [B, N] of
the cells a sampling step predicts) in one jitted `lax.fori_loop` over the order's steps, with
the state of `arjax.sampling.state`. At step k it samples every cell and the order's reveal rule
(`Order.reveal_cells`) says which cells the step fixes: the cells with plan.step_of == k for
fixed-group orders (raster, random, RandAR, ARPG, LPD, PAR, NAR), the most confident unknown
cells within the mask budget for confidence orders (MaskGIT / MaskGIL, `MaskedOrder.reveal_cells`).
Orders that fix a step's cells before the draw and bound them (`max_reveal()`: MAR's order
'masked' with reveal='mar') draw only those cells (`reveal_selected`), so a continuous head's inner
sampling loop runs on the few revealed tokens: without inpainting every step draws exactly the
cells it reveals (`draw_widths`: the order's static `reveal_counts(N)`, one `lax.switch` branch
per distinct count), N draws per image whatever the step count; with given cells, whose counts
differ by row, every step draws `max_reveal()` cells.
Given cells (inpainting / outpainting: `known`, `given`) are never overwritten, so they come
out exactly. Each step recomputes the whole layout (no KV cache), so a parallel step costs one
forward pass of the full sequence; KV-cached decoding is 'sequential', 'cached_groups' (ARPG)
and 'cached_order' (RandAR, LPD, PAR, NAR), which draw the same tokens from the same key (every
cell is drawn with its own key, `Sampler.draw_cells`). For masked (MaskGIT) orders this sampler
is already one compiled step in a `lax.fori_loop`: the bidirectional model sees every slot
change at every step, so nothing can be cached.

Guidance is the `GuidanceSchedule` wrapper (constant, linear, power-cosine) of every sampler.

Legend: B batch, N tokens, V vocabulary, T steps.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.heads.categorical import Categorical
from arjax.orders.base import check_known
from arjax.orders.masked import confidence_mask
from arjax.sampling.base import SAMPLERS, Sampler, build_sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.decode import SequentialSampler
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState, where_cells

_PLAN_KEY = PLAN_KEY  # the name the order tests use.
__all__ = ["OrderSampler", "SequentialSampler", "build_sampler", "confidence_reveal"]


def confidence_reveal(rng, logits, draw, known, num_reveal, gumbel_temp, *,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """bool [B, N]: the `num_reveal` [B] unknown cells with the highest confidence (MaskGIT),
  confidence = log p(draw) under the processed logits [B, N, V] + gumbel_temp Gumbel."""
  conf = Categorical(logits).confidence(draw, temperature=temperature, top_k=top_k, top_p=top_p)
  return confidence_mask(rng, conf, known, num_reveal, gumbel_temp)


@SAMPLERS.register("order")
class OrderSampler(Sampler):
  """Samples class-conditional tokens from an order-driven model (see module docstring)."""

  name = "order"
  counts_revealed = True  # eval.cfg_by='revealed' (see reveal_selected).

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    self._run = jax.jit(self._sample)

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "grid_dist"):
      return "it does not predict a sampling step's cells from a layout (grid_dist)"
    return None

  def _sample(self, params, labels, rng, known, given):
    model = self.fm.bind(params)
    order = model.order
    b, n = labels.shape[0], model.num_tokens
    given_none = known is None
    if known is None:  # nothing given: made here, inside jit, not moved from the host per call.
      known = jnp.zeros((b, n), bool)
      given = jnp.zeros((b, n) + tuple(model.head.token_shape), model.head.token_dtype)
    g = self.guidance
    feed_labels = g.feed_labels(labels, model.null_class)
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b, known)
    feed_plan = g.double(plan)
    num_steps = order.num_steps()
    unknown_start = (~known).sum(1)
    state = SamplerState.create(where_cells(known, given, jnp.zeros_like(given)), known, rng)
    cells = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))  # each cell its own key.

    most = order.max_reveal() if hasattr(order, "max_reveal") else n
    if g.by == "revealed" and (order.confidence or most >= n):
      raise ValueError(f"eval.cfg_by='revealed' needs an order that fixes its cells before the "
                       f"draw and bounds them per step (order 'masked' with reveal='mar'); "
                       f"order {order.name!r} does not")

    widths = self.draw_widths(order, n) if not order.confidence and most < n and \
        given_none else None
    if widths is not None:
      # The head draws at step k exactly the widths[k] cells the step reveals (MAR's cosine
      # count: 1 cell at the first steps, up to max_reveal() at the last), not max_reveal() at
      # every step: the head's inner loop (100 DDPM steps) dominates MAR's sampling time.
      sizes = sorted(set(widths))
      branch_of = jnp.asarray([sizes.index(w) for w in widths], jnp.int32)
      branches = [lambda st, d, w=w: self.reveal_selected(st, d, order, plan, num_steps, w)
                  for w in sizes]

    def body(k, state):
      dist = model.grid_dist(g.double(state.tokens), feed_labels, g.double(state.known),
                             feed_plan)
      if widths is not None:
        if len(branches) == 1:
          return branches[0](state, dist)
        return jax.lax.switch(branch_of[k], branches, state, dist)
      if not order.confidence and most < n:
        return self.reveal_selected(state, dist, order, plan, num_steps, most)
      return self.reveal_step(state, dist, order, plan, num_steps, to_grid=lambda x: x,
                              num_unknown_start=unknown_start, cells=cells)

    state = jax.lax.fori_loop(0, num_steps, body, state)
    return state.tokens, state.known

  @staticmethod
  def draw_widths(order, n: int):
    """The cells each step draws when all N = n cells start unknown (static ints, one per step):
    the order's `reveal_counts(n)`, or None (then every step draws `max_reveal()` cells)."""
    counts = getattr(order, "reveal_counts", None)
    return None if counts is None else tuple(int(c) for c in counts(n))

  def reveal_selected(self, state, dist, order, plan, num_steps: int, most: int):
    """One step of an order that fixes its cells before the draw and reveals at most `most`
    per step (MAR): gathers those cells' predictions [B, most] and draws only them (a
    continuous head's inner loop then runs on `most` tokens, not N). Cells are drawn with the
    keys of `Sampler.draw_cells`, so the tokens equal those of drawing every cell."""
    n = state.known.shape[1]
    reveal = order.reveal_cells(state.step, state.known, plan)
    # The revealed cells first (top_k of a 0/1 score is stable: lowest cell index first).
    _, sel = jax.lax.top_k(reveal.astype(jnp.float32), most)
    sel = sel.astype(jnp.int32)
    valid = jnp.take_along_axis(reveal, sel, 1)
    g = self.guidance
    idx = g.double(sel)
    take = lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), 1)
    part = jax.tree.map(take, dist)
    done = (state.known | reveal).sum(1) if g.by == "revealed" else state.known.sum(1)
    guided = g.guide(part, g.progress(done, n, state.step, num_steps))
    draw = self.draw_cells(guided, jax.random.fold_in(state.key, state.step), sel, n)
    b = sel.shape[0]
    cells = jnp.where(valid, sel, n)  # unrevealed picks go out of range and are dropped.
    tokens = state.tokens.at[jnp.arange(b)[:, None], cells].set(draw.astype(state.tokens.dtype),
                                                                mode="drop")
    return state.replace(tokens=tokens, known=state.known | reveal, step=state.step + 1)

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens [B, N, *T] of the head's dtype.

    known: optional bool [B, N] / [N] / [B, H, W] / [H, W]; those cells keep `given`
    ([B, N, *T] or [B, H, W, *T]) exactly (zero-shot inpainting / outpainting).
    """
    model = self.fm.bind(params)
    b, n = labels.shape[0], model.num_tokens
    tshape, dtype = tuple(model.head.token_shape), model.head.token_dtype
    grid = getattr(model.order, "grid", None)
    if known is not None:
      known = check_known(known, b, n, grid)
      if given is None:
        raise ValueError("inpainting: `known` was given without the `given` tokens")
      given = jnp.asarray(given)
      k = len(tshape)
      lead = given.shape[:given.ndim - k] if k else given.shape
      if len(lead) == 3 and tuple(lead[-2:]) == tuple(grid or ()):
        given = given.reshape((lead[0], n) + tshape)
      if given.shape != (b, n) + tshape:
        raise ValueError(f"inpainting tokens `given` have shape {given.shape}; expected "
                         f"{[b, n] + list(tshape)}")
    tokens, done = self._run(params, labels, rng, known,
                             None if known is None else given.astype(dtype))
    return tokens
