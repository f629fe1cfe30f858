"""Categorical head: logits over a vocabulary, cross-entropy loss, and logit processing
(temperature, top-k, top-p) for sampling.

Legend: B batch, L length, D width, V vocabulary.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from arjax.heads.base import (HEADS, Distribution, broadcast_scale, check_targets,
                              continuous_heads, describe_tokenizer, weighted_mean)
from arjax.nn.layers import Dense


@dataclasses.dataclass(frozen=True)
class CategoricalFields:
  label_smoothing: float = 0.0   # cross-entropy label smoothing (training loss only).

  def __post_init__(self):
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"model.head.label_smoothing={self.label_smoothing}; expected [0, 1)")


class Categorical(Distribution):
  """logits float32 [B, L, V]; tokens int32 [B, L]."""
  logits: jax.Array
  label_smoothing: float = struct.field(pytree_node=False, default=0.0)

  head_name = "categorical"

  def sample(self, key, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    return sample_tokens(key, self.logits, temperature=temperature, top_k=top_k, top_p=top_p)

  def check(self, targets):
    check_targets(targets, (), jnp.int32, self.logits.shape[:-1], self.head_name)

  def loss(self, targets, key=None, weights=None):
    """(mean cross-entropy in nats, possibly label-smoothed; unsmoothed NLL [B, L])."""
    del key  # the cross-entropy draws no noise.
    self.check(targets)
    nll = optax.softmax_cross_entropy_with_integer_labels(self.logits, targets)
    train = nll
    if self.label_smoothing > 0:
      onehot = jax.nn.one_hot(targets, self.logits.shape[-1])
      train = optax.softmax_cross_entropy(self.logits,
                                          optax.smooth_labels(onehot, self.label_smoothing))
    return weighted_mean(train, weights), nll

  def log_prob(self, x):
    self.check(x)
    return -optax.softmax_cross_entropy_with_integer_labels(self.logits, x)

  def confidence(self, x, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
    """log p(x) under the processed logits (MaskGIT's confidence)."""
    logp = jax.nn.log_softmax(process_logits(self.logits, temperature=max(temperature, 1e-6),
                                             top_k=top_k, top_p=top_p), axis=-1)
    return jnp.take_along_axis(logp, x[..., None], axis=-1)[..., 0]

  def argmax(self):
    return jnp.argmax(self.logits, -1)

  def guide(self, uncond: "Categorical", scale) -> "Categorical":
    """Classifier-free guidance on logits: uncond + s (cond - uncond) (s scalar or [B])."""
    s = broadcast_scale(scale, self.logits)
    return self.replace(logits=uncond.logits + s * (self.logits - uncond.logits))


@HEADS.register("categorical", fields=CategoricalFields)
class CategoricalHead(nnx.Module):
  """h [B, L, D] -> Categorical(logits float32 [B, L, V])."""

  token_shape = ()
  token_dtype = jnp.int32
  sample_options = ("top_k", "top_p")   # Categorical.sample's options besides temperature.

  def __init__(self, dim: int, tokenizer, fields: CategoricalFields = CategoricalFields(), *,
               rngs: nnx.Rngs, dtype=None):
    vocab_size = int(tokenizer.vocab_size)
    if vocab_size <= 1:
      raise ValueError(f"head 'categorical' needs a discrete tokenizer (vocab_size > 1), got "
                       f"{describe_tokenizer(tokenizer)}: use a continuous head "
                       f"(model.head.name in {continuous_heads()})")
    self.proj = Dense(dim, vocab_size, axes=("embed", "vocab"), rngs=rngs, dtype=dtype,
                      init=nnx.initializers.normal(stddev=0.02), preferred_element_type=jnp.float32)
    self.vocab_size = vocab_size
    self.label_smoothing = fields.label_smoothing

  def __call__(self, h, cond=None) -> Categorical:
    del cond  # the categorical head is a plain projection.
    return Categorical(self.proj(h).astype(jnp.float32), label_smoothing=self.label_smoothing)


def process_logits(logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Applies temperature, then top-k, then top-p (nucleus) filtering. logits [..., V]."""
  logits = logits.astype(jnp.float32)
  if temperature != 1.0:
    logits = logits / jnp.maximum(temperature, 1e-6)
  neg = jnp.finfo(jnp.float32).min
  v = logits.shape[-1]
  if 0 < top_k < v:
    kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    cum = jnp.cumsum(probs, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
    keep = (cum - probs) < top_p
    cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < cutoff, neg, logits)
  return logits


def sample_tokens(rng, logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Draws tokens int32 [...] from logits [..., V]; temperature 0 means greedy."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = process_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
