"""'next_scale': KV-cached next-scale sampling (VAR, Tian et al. 2024; autoregressive_infer_cfg of
the released code).

K passes for K scales. Pass k feeds the h_k^2 inputs of scale k (the class and start position at
k = 0; Linear(area(f_hat, h_k)) after), which attend to the KV cache of scales < k (the order's
decode mask: all of them, or scale k-1 only with the Markovian mask), and draws the scale's h_k^2
tokens in parallel through the shared `Sampler.reveal_step` (guidance, the head's top-k / top-p,
the order's reveal rule: the whole scale). The drawn code map then updates the running
reconstruction through the tokenizer's quantizer,

  f_hat += phi_k(bicubic(e[tokens_k], H))           (no resize at the last scale)

and area(f_hat, h_{k+1}) is the next pass's input; the final f_hat is what the tokenizer's
decoder turns into pixels (`sample_images`, `Sampler.sample_images`).

VAR's guidance ramp: logits = (1 + t) l_c - t l_u with t = cfg k / (K - 1). That is the 'linear'
guidance schedule by steps with scale s = 1 + cfg (configs/imagenet256/var.py sets
eval.cfg_schedule='linear', eval.cfg_by='steps'; eval.cfg_scale = 1 + VAR's cfg).

The K passes have K different query counts, so the loop over scales is unrolled inside one jit
(K compiled pieces, no padding to the largest scale). The cache holds N slots per row; under
guidance the batch is doubled (conditional rows first).

Two model hooks generalise the loop. A model with `flexible_scales` (FlexVAR,
arjax.models.flexvar) samples at any list `scales=` it accepts: the list's order, a cache of its N
slots, and the model's `sample_update` (non-residual: the next input is bicubic(e[q_k], s_{k+1})).
A model with `refine_schedule` (HMAR, arjax.models.hmar) refines a scale in place after drawing
it: the lowest-probability cells are masked again and redrawn by its refinement branch
(`_refine`), as many steps as the scale's schedule has counts.

Legend: B batch, N tokens, K scales, H/W latent grid, Dv code dim, s side of a scale.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.sampling.base import SAMPLERS, Sampler
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.state import PLAN_KEY, SamplerState


@SAMPLERS.register("next_scale")
class NextScaleSampler(Sampler):
  """Samples class-conditional multi-scale tokens scale by scale (see the module docstring)."""

  name = "next_scale"

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    super().__init__(fm, sampling, guidance)
    self._run = jax.jit(self._sample, static_argnums=3)

  @classmethod
  def cannot_run(cls, model):
    if not hasattr(model, "decode_scale"):
      return "it has no next-scale decoding (decode_scale)"
    return None

  def _sample(self, params, labels, rng, scales=None):
    """labels int32 [B] -> (tokens int32 [B, N], f_hat float32 [B, H, W, Dv]).
    scales (static): a list for a model with flexible scales (FlexVAR), whose `decode_scale`
    takes the list's order and whose `sample_update` gives the next pass's inputs."""
    from arjax.tokenizers.resample import area_resize
    model = self.fm.bind(params)
    flexible = getattr(model, "flexible_scales", False)
    order = model.scale_order(scales) if flexible and scales is not None else model.order
    vq = model.scale_quantizer()
    codebook = jax.lax.stop_gradient(vq.codebook[...])
    b, n = labels.shape[0], order.num_tokens
    g = self.guidance
    feed = g.feed_labels(labels, model.null_class)
    plan = order.sample_plan(jax.random.fold_in(rng, PLAN_KEY), b)
    cache = (model.init_cache(feed.shape[0], num_tokens=n) if flexible
             else model.init_cache(feed.shape[0]))
    state = SamplerState.create(self.token_buffer(model, b, n), jnp.zeros((b, n), bool), rng,
                                cache=cache)
    grid = order.grid
    f_hat = jnp.zeros((b,) + tuple(grid) + (vq.code_dim,), jnp.float32)
    inputs = None
    num_steps = order.num_steps()
    schedule = (model.refine_schedule(order) if hasattr(model, "refine_schedule") else None)
    for k, s in enumerate(order.scales):
      a, e = order.bounds[k]
      if flexible:
        dist, cache = model.decode_scale(k, inputs, feed, state.cache, order=order)
      else:
        dist, cache = model.decode_scale(k, inputs, feed, state.cache)
      to_grid = lambda x, a=a: jax.lax.dynamic_update_slice_in_dim(
          jnp.zeros((b, n) + x.shape[2:], x.dtype), x, a, axis=1)
      counts = schedule[k] if schedule is not None else (s * s,)
      if len(counts) > 1:  # the guided prediction, to rank the drawn cells (HMAR)
        guided = g.guide(dist, g.progress(state.known.sum(1), n, state.step, num_steps))
      state = self.reveal_step(state.replace(cache=cache), dist, order, plan, num_steps,
                               to_grid=to_grid)
      state = state.replace(position=state.position + (e - a))
      if len(counts) > 1:
        cells = self._refine(model, k, inputs[:b], state.tokens[:, a:e], guided, counts, labels,
                             jax.random.fold_in(state.key, 1_000_000 + k))
        state = state.replace(tokens=state.tokens.at[:, a:e].set(cells))
      idx = state.tokens[:, a:e].reshape(b, s, s)
      if flexible:  # non-residual: the next input is this scale's codes, upsampled.
        f_hat, nxt_inputs = model.sample_update(vq, order, k, idx, f_hat)
        inputs = None if nxt_inputs is None else g.double(nxt_inputs)
        continue
      f_hat = f_hat + jax.lax.stop_gradient(vq._upsample(k, jnp.take(codebook, idx, axis=0)))
      if k + 1 < len(order.scales):
        nxt = order.scales[k + 1]
        inputs = g.double(area_resize(f_hat, nxt).reshape(b, nxt * nxt, vq.code_dim))
    return state.tokens, f_hat

  def _refine(self, model, k: int, ns_inputs, cells, guided, counts, labels, key):
    """In-scale masked refinement of scale k (HMAR): cells int32 [B, L] drawn from `guided`
    (the doubled-batch prediction's guided form, conditional rows first); counts: the scale's
    schedule. After step j the sum(counts[j+1:]) cells of lowest probability are masked and
    redrawn by the model's refinement branch (unguided: conditional rows only)."""
    b, l = cells.shape
    rows = jnp.arange(b)[:, None]
    s = int(round(l ** 0.5))

    def lowest(logits, cells, among, num):
      logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32), -1),
                                 cells[..., None], -1)[..., 0]
      logp = jnp.where(among, logp, jnp.inf)
      pick = jnp.argsort(logp, axis=1)[:, :num]
      return jnp.zeros((b, l), bool).at[rows, pick].set(True)

    masked = lowest(guided.logits[:b], cells, jnp.ones((b, l), bool), sum(counts[1:]))
    for j in range(1, len(counts)):
      dist = model.refine_scale(k, ns_inputs, cells.reshape(b, s, s), masked, labels)
      cells = jnp.where(masked, self.draw(dist, jax.random.fold_in(key, j)), cells)
      if j + 1 < len(counts):
        masked = lowest(dist.logits, cells, masked, sum(counts[j + 1:]))
    return cells

  def check_scales(self, scales: Sequence[int]):
    """A requested scale list must be the model's: VAR's position table and level embeddings
    are fixed by its training scales (FlexVAR's are not)."""
    from arjax.orders.scales import check_scales
    model = self.fm.bind(self.fm.abstract_params)
    if getattr(model, "flexible_scales", False):
      return model.check_sampling_scales(scales)
    have = tuple(model.scales)
    scales = check_scales(scales, "sampling scales", grid=have[-1], max_tokens=model.num_tokens)
    if scales != have:
      raise ValueError(f"sampling scales={list(scales)}: model 'var' can only sample at its "
                       f"training scales {list(have)} (fixed position table of "
                       f"{sum(s * s for s in have)} slots and {len(have)} level embeddings)")

  def sample_with_fhat(self, params, labels, rng, scales: Optional[Sequence[int]] = None):
    """labels int32 [B] -> (tokens int32 [B, N], final f_hat [B, H, W, Dv])."""
    if scales is not None:
      scales = self.check_scales(scales)  # a tuple for a flexible model, else None
    return self._run(params, jnp.asarray(labels, jnp.int32), rng, scales)

  def sample_tokens(self, params, labels, rng, known=None, given=None, scales=None):
    """labels int32 [B] -> tokens int32 [B, N] (scales concatenated, scale 1 first)."""
    if known is not None or given is not None:
      raise ValueError("sampler 'next_scale' does not take an inpainting mask (known / given): "
                       "VAR's editing is not implemented here")
    return self.sample_with_fhat(params, labels, rng, scales)[0]
