"""KV-cached sequential decoding in one jitted `lax.fori_loop`, with the cache donated.

Step 0 feeds the class token (cache slot 0) and samples x_0; step i >= 1 feeds x_{i-1} at slot
i and samples x_i. With CFG the batch is doubled (conditional, null class) and the logits
combined before sampling; both halves are fed the same sampled token.

Legend: B batch, N tokens per image, V vocabulary.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from arjax.heads.categorical import sample_tokens
from arjax.sampling.guidance import cfg_logits, double_labels
from arjax.core.functional import FunctionalModel


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  cfg_scale: float = 1.0
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def validate(self):
    if self.temperature < 0:
      raise ValueError(f"temperature={self.temperature}; expected >= 0")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k}; expected >= 0")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p={self.top_p}; expected a value in (0, 1]")


class SequentialSampler:
  """Samples class-conditional token sequences from a raster (next-token) model."""

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig):
    sampling.validate()
    self.fm = fm
    self.sampling = sampling
    self._run = jax.jit(self._decode, donate_argnames=("caches",))

  @property
  def use_cfg(self) -> bool:
    return self.sampling.cfg_scale != 1.0

  def init_caches(self, params, batch: int):
    rows = 2 * batch if self.use_cfg else batch
    return jax.jit(lambda p: self.fm.bind(p).init_cache(rows))(params)

  def _guide(self, logits):
    return cfg_logits(logits, self.sampling.cfg_scale) if self.use_cfg else logits

  def _decode(self, params, labels, caches, rng):
    s = self.sampling
    model = self.fm.bind(params)
    n = model.tokenizer.tokens_per_image
    b = labels.shape[0]
    feed_labels = double_labels(labels, model.null_class) if self.use_cfg else labels
    draw = functools.partial(sample_tokens, temperature=s.temperature, top_k=s.top_k,
                             top_p=s.top_p)
    logits, caches = model.decode_prefix(feed_labels, caches)
    first = draw(jax.random.fold_in(rng, 0), self._guide(logits))
    tokens = jnp.zeros((b, n), jnp.int32).at[:, 0].set(first)

    def body(i, carry):
      tokens, caches = carry
      prev = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
      feed = jnp.concatenate([prev, prev]) if self.use_cfg else prev
      logits, caches = model.decode_tokens(feed, i, caches)
      nxt = draw(jax.random.fold_in(rng, i + 1), self._guide(logits[:, 0]))
      tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1)
      return tokens, caches

    # Returning the caches lets XLA alias the donated input buffers, so the loop updates the
    # cache in place instead of allocating a second copy.
    return jax.lax.fori_loop(0, n - 1, body, (tokens, caches))

  def sample_tokens(self, params, labels, rng):
    """labels int32 [B], rng key -> tokens int32 [B, N]."""
    caches = self.init_caches(params, labels.shape[0])
    tokens, _ = self._run(params, labels, caches, rng)
    return tokens

  def sample_images(self, params, labels, rng):
    """-> uint8 images [B, H, W, C] decoded by the model's tokenizer."""
    tokens = self.sample_tokens(params, labels, rng)
    return self.fm.bind(params).tokenizer.decode(tokens)


def class_grid_labels(num_classes: int, per_class: int):
  """int32 [num_classes * per_class]: each class repeated `per_class` times (grid rows)."""
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), per_class)
