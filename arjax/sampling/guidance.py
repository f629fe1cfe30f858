"""Classifier-free guidance (Ho & Salimans 2022) on logits, as LlamaGen applies it.

The batch is doubled: the first half carries the classes, the second the null class; the
guided logits are  l = l_u + s * (l_c - l_u).  s = 1 returns the conditional logits.
"""
from __future__ import annotations

import jax.numpy as jnp


def double_labels(labels, null_class: int):
  """labels int [B] -> [2B]: conditional half, then the null class."""
  return jnp.concatenate([labels, jnp.full_like(labels, null_class)])


def cfg_logits(logits, scale):
  """logits [2B, ..., V] (conditional half first) -> [B, ..., V]."""
  cond, uncond = jnp.split(logits, 2, axis=0)
  return uncond + scale * (cond - uncond)
