"""Optimizer: AdamW with linear warmup and cosine decay, global-norm clipping."""
from __future__ import annotations

import jax.numpy as jnp
import optax


def learning_rate_schedule(t):
  warmup = max(int(t.warmup_steps), 0)
  decay = max(int(t.num_steps) - warmup, 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else t.lr, peak_value=t.lr, warmup_steps=warmup,
      decay_steps=warmup + decay, end_value=t.lr * t.end_lr_ratio)


def _decay_mask(params):
  # No weight decay on norms and 1-D parameters (Llama/LlamaGen practice).
  import jax
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(t) -> optax.GradientTransformation:
  parts = []
  if t.grad_clip and t.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(t.grad_clip))
  parts.append(optax.adamw(learning_rate_schedule(t), b1=t.b1, b2=t.b2,
                           weight_decay=t.weight_decay, mask=_decay_mask))
  return optax.chain(*parts)
