"""Categorical head: logits over a vocabulary, cross-entropy loss, and logit processing
(temperature, top-k, top-p) for sampling.

Legend: B batch, L length, D width, V vocabulary.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from arjax.nn.layers import Dense
from arjax.registry import Registry

HEADS: Registry = Registry("head")


@HEADS.register("categorical")
class CategoricalHead(nnx.Module):
  """h [B, L, D] -> logits float32 [B, L, V]."""

  def __init__(self, dim: int, vocab_size: int, *, rngs: nnx.Rngs, dtype=None,
               label_smoothing: float = 0.0):
    self.proj = Dense(dim, vocab_size, axes=("embed", "vocab"), rngs=rngs, dtype=dtype,
                      init=nnx.initializers.normal(stddev=0.02), preferred_element_type=jnp.float32)
    self.vocab_size = vocab_size
    self.label_smoothing = label_smoothing

  def __call__(self, h):
    return self.proj(h).astype(jnp.float32)

  def loss(self, logits, targets, weights=None):
    """Mean cross-entropy in nats; also returns the unsmoothed NLL [B, L]."""
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if self.label_smoothing > 0:
      onehot = jax.nn.one_hot(targets, self.vocab_size)
      soft = optax.smooth_labels(onehot, self.label_smoothing)
      train = optax.softmax_cross_entropy(logits, soft)
    else:
      train = nll
    if weights is None:
      weights = jnp.ones_like(nll)
    denom = jnp.maximum(weights.sum(), 1.0)
    return (train * weights).sum() / denom, nll


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
