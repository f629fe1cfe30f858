"""KV-cached parallel group decoding for models with separate target queries (ARPG).

`OrderSampler` recomputes the whole layout at every step. ARPG's queries never see each other,
so its decoder only needs the content generated so far (Li et al. 2025): `CachedGroupSampler`
feeds the class once, then at step k predicts the G_k targets of the order's group k from the
cache and appends their tokens to it. One jitted `lax.fori_loop`; groups are padded to the
largest group G (padded queries are dropped, padded content slots are overwritten by the next
step), so the cache holds N + G slots.

A model provides `init_group_cache(batch, length)`, `feed_content(tokens, labels, src, cache,
slot0)` and `predict_group(cells, cache, kv_length)` (arjax.models.arpg). Inpainting goes
through `OrderSampler`.

Legend: B batch, N tokens, G largest group, V vocabulary.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from arjax.heads.categorical import sample_tokens
from arjax.orders import SRC_CLASS
from arjax.sampling.decode import SamplingConfig
from arjax.sampling.guidance import double_labels
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.orders import _PLAN_KEY
from arjax.core.functional import FunctionalModel


class CachedGroupSampler:
  """Samples class-conditional tokens in the order's groups with a KV cache (see above)."""

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None):
    sampling.validate()
    model = fm.bind(fm.abstract_params)
    if not hasattr(model, "predict_group"):
      raise ValueError(f"{type(model).__name__} has no target queries to decode from a cache "
                       "(predict_group); use arjax.sampling.orders.OrderSampler")
    self.fm, self.sampling = fm, sampling
    self.guidance = guidance or GuidanceSchedule("constant", sampling.cfg_scale)
    self._run = jax.jit(self._sample)

  def _sample(self, params, labels, rng):
    s = self.sampling
    model = self.fm.bind(params)
    order = model.order
    b, n = labels.shape[0], model.num_tokens
    cum = np.asarray([0] + list(order.cumulative), np.int32)
    g = int(np.diff(cum).max())
    cfg = self.guidance.enabled
    dbl = (lambda x: jnp.concatenate([x, x])) if cfg else (lambda x: x)
    feed_labels = double_labels(labels, model.null_class) if cfg else labels
    bb = feed_labels.shape[0]
    perm = order.sample_plan(jax.random.fold_in(rng, _PLAN_KEY), b).perm        # [B, N]
    perm = jnp.concatenate([perm, jnp.broadcast_to(perm[:, :1], (b, g))], 1)   # pad: G more.
    starts, sizes = jnp.asarray(cum[:-1]), jnp.asarray(np.diff(cum))
    draw = functools.partial(sample_tokens, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p)
    tokens = jnp.zeros((b, n), jnp.int32)
    cache = model.init_group_cache(bb, n + g + 1)
    cache = model.feed_content(dbl(tokens), feed_labels,
                               jnp.full((bb, 1), SRC_CLASS, jnp.int32), cache, 0)
    slot = jnp.arange(g)
    num_steps = len(cum) - 1

    def body(k, carry):
      tokens, cache = carry
      a, size = starts[k], sizes[k]
      cells = jax.lax.dynamic_slice_in_dim(perm, a, g, axis=1)                 # [B, G]
      logits = model.predict_group(dbl(cells), cache, a + 1)                  # [B', G, V]
      if cfg:
        logits = self.guidance.combine(logits, self.guidance.progress(a, n, k, num_steps))
      new = draw(jax.random.fold_in(rng, k), logits)                          # [B, G]
      valid = slot[None] < size
      tokens = tokens.at[jnp.arange(b)[:, None], jnp.where(valid, cells, n)].set(new,
                                                                                  mode="drop")
      # Append this step's tokens (content slots 1 + a ... a + size) for the next steps.
      cache = model.feed_content(dbl(tokens), feed_labels, dbl(cells), cache, a + 1)
      return tokens, cache

    tokens, _ = jax.lax.fori_loop(0, num_steps, body, (tokens, cache))
    return tokens

  @property
  def use_cfg(self) -> bool:
    return self.guidance.enabled

  def sample_tokens(self, params, labels, rng, known=None, given=None):
    """labels int32 [B] -> tokens int32 [B, N]; with `known` / `given` (inpainting), the
    recomputing `OrderSampler` (same plan, same guidance)."""
    if known is not None:
      from arjax.sampling.orders import OrderSampler
      return OrderSampler(self.fm, self.sampling, self.guidance).sample_tokens(
          params, labels, rng, known=known, given=given)
    return self._run(params, labels, rng)

  def sample_images(self, params, labels, rng, **kw):
    tokens = self.sample_tokens(params, labels, rng, **kw)
    return self.fm.bind(params).tokenizer.decode(tokens)
