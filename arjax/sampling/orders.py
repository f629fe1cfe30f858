"""Samplers driven by the order: parallel groups and confidence-based iterative decoding.

`OrderSampler` runs any model with `grid_logits(tokens, labels, known, plan)` (logits [B, N, V]
for the cells a sampling step predicts) in one jitted `lax.fori_loop` over the order's steps.
State: tokens [B, N] and known [B, N]. At step k it samples every cell, then reveals
  - fixed-group orders (raster, random, RandAR, ARPG, LPD, PAR, NAR): the cells with
    plan.step_of == k (the order's sequence of position groups);
  - confidence orders (MaskGIT / MaskGIL): the most confident unknown cells, confidence =
    log p(x) + tau_t Gumbel, as many as the order's reveal rule says.
Given cells (inpainting / outpainting: `known`, `given`) are never overwritten, so they come
out exactly. Each step recomputes the whole layout (no KV cache), so a parallel step costs one
forward pass of the full sequence; KV-cached raster decoding stays in `SequentialSampler`.

Guidance is a `GuidanceSchedule` wrapper (constant, linear, power-cosine) around every sampler.

Legend: B batch, N tokens, V vocabulary, T steps.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from arjax.heads.categorical import process_logits, sample_tokens
from arjax.orders.base import check_known
from arjax.sampling.decode import SamplingConfig, SequentialSampler
from arjax.sampling.guidance import double_labels
from arjax.sampling.guidance_schedule import GuidanceSchedule, from_config
from arjax.core.functional import FunctionalModel

_PLAN_KEY = 1 << 30  # fold_in index of the plan's key: distinct from every step index.


def confidence_reveal(rng, logits, draw, known, num_reveal, gumbel_temp, *,
                      temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """bool [B, N]: the `num_reveal` [B] unknown cells with the highest confidence (MaskGIT)."""
  logp = jax.nn.log_softmax(process_logits(logits, temperature=max(temperature, 1e-6),
                                           top_k=top_k, top_p=top_p), axis=-1)
  conf = jnp.take_along_axis(logp, draw[..., None], axis=-1)[..., 0]
  conf = conf + gumbel_temp * jax.random.gumbel(rng, conf.shape)
  conf = jnp.where(known, -jnp.inf, conf)
  ranked = jnp.sort(conf, axis=1)[:, ::-1]
  thr = jnp.take_along_axis(ranked, jnp.maximum(num_reveal - 1, 0)[:, None], axis=1)
  return (~known) & (conf >= thr) & (num_reveal[:, None] > 0)


class OrderSampler:
  """Samples class-conditional tokens from an order-driven model (see module docstring)."""

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    sampling.validate()
    self.fm = fm
    self.sampling = sampling
    self.guidance = guidance or GuidanceSchedule("constant", sampling.cfg_scale)
    self._run = jax.jit(self._sample)

  @property
  def use_cfg(self) -> bool:
    return self.guidance.enabled

  def _sample(self, params, labels, rng, known, given):
    s = self.sampling
    model = self.fm.bind(params)
    order = model.order
    b, n = labels.shape[0], model.num_tokens
    cfg = self.use_cfg
    dbl = (lambda x: jnp.concatenate([x, x])) if cfg else (lambda x: x)
    feed_labels = double_labels(labels, model.null_class) if cfg else labels
    tokens = jnp.where(known, given, 0).astype(jnp.int32)
    plan = order.sample_plan(jax.random.fold_in(rng, _PLAN_KEY), b, known)
    feed_plan = jax.tree.map(dbl, plan)
    num_steps = order.num_steps()
    unknown_start = (~known).sum(1)
    draw_fn = functools.partial(sample_tokens, temperature=s.temperature, top_k=s.top_k,
                                top_p=s.top_p)

    def body(k, carry):
      tokens, known = carry
      logits = model.grid_logits(dbl(tokens), feed_labels, dbl(known), feed_plan)
      if cfg:
        progress = self.guidance.progress(known.sum(1), n, k, num_steps)
        logits = self.guidance.combine(logits, progress)
      key = jax.random.fold_in(rng, k)
      draw = draw_fn(key, logits)
      if order.confidence:
        num_reveal = order.num_to_reveal(k, unknown_start, (~known).sum(1))
        reveal = confidence_reveal(jax.random.fold_in(key, 1), logits, draw, known, num_reveal,
                                   order.gumbel_temp(k), temperature=s.temperature,
                                   top_k=s.top_k, top_p=s.top_p)
      else:
        reveal = (plan.step_of == k) & ~known
      return jnp.where(reveal, draw, tokens), known | reveal

    tokens, known = jax.lax.fori_loop(0, num_steps, body, (tokens, known))
    return tokens, known

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens int32 [B, N].

    known: optional bool [B, N] / [N] / [B, H, W] / [H, W]; those cells keep `given`
    (int [B, N] or [B, H, W]) exactly (zero-shot inpainting / outpainting).
    """
    model = self.fm.bind(params)
    b, n = labels.shape[0], model.num_tokens
    grid = getattr(model.order, "grid", None)
    if known is None:
      known = jnp.zeros((b, n), bool)
      given = jnp.zeros((b, n), jnp.int32)
    else:
      known = check_known(known, b, n, grid)
      if given is None:
        raise ValueError("inpainting: `known` was given without the `given` tokens")
      given = jnp.asarray(given)
      if given.shape[-2:] == tuple(grid or ()) and given.ndim == 3:
        given = given.reshape(given.shape[0], n)
      if given.shape != (b, n):
        raise ValueError(f"inpainting tokens `given` have shape {given.shape}; expected "
                         f"[{b}, {n}]")
    tokens, done = self._run(params, labels, rng, known, given.astype(jnp.int32))
    return tokens

  def sample_images(self, params, labels, rng, **kw):
    tokens = self.sample_tokens(params, labels, rng, **kw)
    return self.fm.bind(params).tokenizer.decode(tokens)


class GuidedSequentialSampler(SequentialSampler):
  """`SequentialSampler` (KV-cached raster decoding) with a guidance schedule.

  Step i samples x_i with scale schedule.at(i / N) (RAR's power-cosine schedule, Yu et al. 2024).
  """

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    self.guidance = guidance or GuidanceSchedule("constant", sampling.cfg_scale)
    super().__init__(fm, sampling)

  @property
  def use_cfg(self) -> bool:
    return self.guidance.enabled

  def _decode(self, params, labels, caches, rng):
    s = self.sampling
    model = self.fm.bind(params)
    n = model.tokenizer.tokens_per_image
    b = labels.shape[0]
    cfg = self.use_cfg
    feed_labels = double_labels(labels, model.null_class) if cfg else labels
    draw = functools.partial(sample_tokens, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p)
    guide = lambda logits, i: (self.guidance.combine(logits, self.guidance.progress(i, n, i, n))
                               if cfg else logits)
    logits, caches = model.decode_prefix(feed_labels, caches)
    first = draw(jax.random.fold_in(rng, 0), guide(logits, 0))
    tokens = jnp.zeros((b, n), jnp.int32).at[:, 0].set(first)

    def body(i, carry):
      tokens, caches = carry
      prev = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
      feed = jnp.concatenate([prev, prev]) if cfg else prev
      logits, caches = model.decode_tokens(feed, i, caches)
      nxt = draw(jax.random.fold_in(rng, i + 1), guide(logits[:, 0], i + 1))
      tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1)
      return tokens, caches

    return jax.lax.fori_loop(0, n - 1, body, (tokens, caches))


def build_sampler(fm: FunctionalModel, sampling: SamplingConfig, config=None,
                  guidance: Optional[GuidanceSchedule] = None):
  """The sampler a model's order needs: KV-cached raster decoding when the model samples in
  raster order with a cache, KV-cached group decoding for target-query models (ARPG), else
  `OrderSampler`. The guidance schedule comes from
  `guidance`, else from config.eval (cfg_schedule, cfg_power, cfg_by), else constant."""
  if guidance is None:
    guidance = (from_config(config, sampling.cfg_scale) if config is not None
                else GuidanceSchedule("constant", sampling.cfg_scale))
  model = fm.bind(fm.abstract_params)
  order = getattr(model, "order", None)
  cached = hasattr(model, "decode_tokens") and getattr(model, "supports_cached_raster", True)
  raster = order is not None and (order.name == "raster" or (
      order.name == "random" and not getattr(order, "sample_random", True)))
  if cached and raster:
    # A constant scale is the plain KV-cached sampler itself (and its exact samples).
    if guidance.kind == "constant":
      return SequentialSampler(fm, sampling)
    return GuidedSequentialSampler(fm, sampling, guidance)
  if hasattr(model, "predict_group"):  # target queries (ARPG): decode the groups from a cache.
    from arjax.sampling.cached_groups import CachedGroupSampler
    return CachedGroupSampler(fm, sampling, guidance)
  if hasattr(model, "grid_logits"):
    return OrderSampler(fm, sampling, guidance)
  return GuidedSequentialSampler(fm, sampling, guidance)
