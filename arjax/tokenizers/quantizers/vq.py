"""Nearest-neighbour vector quantization (VQ-VAE, van den Oord et al. 2017; VQGAN, Esser et al.
2021), with LlamaGen's options (Sun et al. 2024).

  * Lookup: the codebook row nearest to each latent vector. With `l2_norm` both the latent and
    the codebook are L2-normalised first, so the match is cosine similarity (LlamaGen, after
    ViT-VQGAN, Yu et al. 2022); this is what gives LlamaGen its 97% codebook usage.
  * Code-dimension projection: when the encoder's channels differ from `code_dim`, a linear map
    (a 1x1 conv) projects in and another projects back out ("factorized codes", ViT-VQGAN;
    LlamaGen's 256 -> 8 -> 256 quant_conv/post_quant_conv).
  * Loss: codebook_weight * ||sg(z) - z_q||^2 + beta * ||z - sg(z_q)||^2 (means over elements),
    beta = 0.25; optional entropy penalty (per-sample minus codebook entropy of
    softmax(-distance / temperature)), LlamaGen's `entropy_loss_ratio`.
  * Straight-through estimator: the decoder reads z + sg(z_q - z), so d out / d z = I.
  * EMA codebook (`ema_decay` > 0; VQ-VAE appendix, Razavi et al. 2019): the codebook is not a
    gradient parameter but the ratio of exponential moving averages of the summed assigned
    latents and of the assignment counts (Laplace-smoothed). The codebook term of the loss
    is dropped.
  * Dead-code restart (`dead_code_threshold` > 0; Dhariwal et al. 2020, Jukebox): a moving
    average of each code's hits per step is kept; codes below the threshold are replaced by
    random latents of the current batch.

EMA statistics, the EMA codebook and the usage averages are `nnx.BatchStat`-like variables that
the module updates in place when called with train=True; arjax's trainer carries them between
steps as model state (`TrainState.model_state`, arjax.core.functional). `ema_codebook_update`
and `restart_dead_codes` are also pure functions for other loops.

Legend: B batch, h/w latent grid, C encoder channels, D code dim, K codebook size, M = B*h*w.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.tokenizers.conv import Linear
from arjax.tokenizers.quantizers.base import (QuantizerOutput, entropy_terms, l2_normalize,
                                              nearest_code, raster_positions, usage_metrics)

FIELDS = {
    "codebook_size": (16384, "K, number of codes"),
    "code_dim": (8, "D, code vector width (projected from/to the encoder channels)"),
    "beta": (0.25, "commitment weight on ||z - sg(z_q)||^2"),
    "codebook_weight": (1.0, "weight on ||sg(z) - z_q||^2 (unused with EMA updates)"),
    "l2_norm": (False, "L2-normalise latents and codes before the lookup (LlamaGen)"),
    "ema_decay": (0.0, "EMA codebook updates with this decay (0: gradient codebook)"),
    "ema_eps": (1e-5, "Laplace smoothing of EMA counts"),
    "dead_code_threshold": (0.0, "restart codes with fewer average hits per step (0: off)"),
    "usage_decay": (0.99, "decay of the per-code hit average used for restarts"),
    "entropy_weight": (0.0, "weight of the entropy penalty (LlamaGen entropy_loss_ratio)"),
    "entropy_temperature": (0.01, "temperature of softmax(-distance) in the entropy penalty"),
}


class EMACodebook(nnx.Variable):
  """A codebook updated by moving averages, not by the optimizer."""


def ema_codebook_update(count: jax.Array, embed_sum: jax.Array, z: jax.Array, idx: jax.Array,
                        decay: float, eps: float) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """One EMA step. count [K], embed_sum [K, D], z [M, D], idx int [M] -> (count, sum, codebook).

  codebook_k = sum_k / n~_k with n~ the Laplace-smoothed counts (n_k + eps) / (n + K eps) * n,
  so a code that is never hit keeps a finite vector.
  """
  k = count.shape[0]
  hits = jnp.bincount(idx.reshape(-1), length=k).astype(count.dtype)
  sums = jax.ops.segment_sum(z.reshape(-1, z.shape[-1]).astype(embed_sum.dtype),
                             idx.reshape(-1), num_segments=k)
  count = decay * count + (1.0 - decay) * hits
  embed_sum = decay * embed_sum + (1.0 - decay) * sums
  n = count.sum()
  smoothed = (count + eps) / (n + k * eps) * n
  return count, embed_sum, embed_sum / smoothed[:, None]


def restart_dead_codes(codebook: jax.Array, usage: jax.Array, z: jax.Array, key: jax.Array,
                       threshold: float) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Replaces codes whose hit average `usage` [K] is below `threshold` by random rows of
  z [M, D]. Returns (codebook, usage, dead mask [K]); restarted codes get the mean usage so they
  have time to attract latents before they could be restarted again."""
  k = codebook.shape[0]
  flat = z.reshape(-1, z.shape[-1]).astype(codebook.dtype)
  dead = usage < threshold
  picks = jax.random.randint(key, (k,), 0, flat.shape[0])
  codebook = jnp.where(dead[:, None], flat[picks], codebook)
  usage = jnp.where(dead, jnp.maximum(usage.mean(), threshold), usage)
  return codebook, usage, dead


class VectorQuantizer(nnx.Module):
  """z [B, h, w, C] -> z_q [B, h, w, C], tokens int32 [B, h*w]."""

  FIELDS = FIELDS

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs, codebook_size: int = 16384,
               code_dim: int = 8, beta: float = 0.25, codebook_weight: float = 1.0,
               l2_norm: bool = False, ema_decay: float = 0.0, ema_eps: float = 1e-5,
               dead_code_threshold: float = 0.0, usage_decay: float = 0.99,
               entropy_weight: float = 0.0, entropy_temperature: float = 0.01):
    if codebook_size < 2 or code_dim < 1:
      raise ValueError(f"quantizer.codebook_size={codebook_size} must be >= 2 and "
                       f"quantizer.code_dim={code_dim} >= 1")
    if not 0.0 <= ema_decay < 1.0:
      raise ValueError(f"quantizer.ema_decay={ema_decay}; expected 0 <= decay < 1")
    self.in_channels = self.out_channels = in_channels
    self.vocab_size = self.codebook_size = codebook_size
    self.code_dim = code_dim
    self.beta, self.codebook_weight = beta, codebook_weight
    self.l2_norm = l2_norm
    self.ema_decay, self.ema_eps = ema_decay, ema_eps
    self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
    self.entropy_weight, self.entropy_temperature = entropy_weight, entropy_temperature
    if in_channels != code_dim:
      self.proj_in = Linear(in_channels, code_dim, rngs=rngs, axes=("mlp", None))
      self.proj_out = Linear(code_dim, in_channels, rngs=rngs, axes=(None, "mlp"))
    else:
      self.proj_in = self.proj_out = None
    # Taming/LlamaGen initialisation: uniform in +-1/K (then normalised when l2_norm).
    table = jax.random.uniform(rngs.params(), (codebook_size, code_dim), jnp.float32,
                               -1.0 / codebook_size, 1.0 / codebook_size)
    if l2_norm:
      table = l2_normalize(table)
    axes = ("vocab", None)
    if ema_decay > 0:
      self.codebook = EMACodebook(table, logical_axes=axes)
      # Counts start at one with sums equal to the codes, so the first updates move codes
      # gradually instead of dividing a sum by a near-zero count.
      self.ema_count = nnx.BatchStat(jnp.ones((codebook_size,), jnp.float32))
      self.ema_sum = nnx.BatchStat(table, logical_axes=axes)  # sharded like the codebook.
    else:
      self.codebook = nnx.Param(table, logical_axes=axes)
      self.ema_count = self.ema_sum = None
    if dead_code_threshold > 0:
      # An explicit dtype: a weak-typed float32 here would make the train step compile twice
      # (the first step's output is strongly typed).
      self.usage = nnx.BatchStat(jnp.full((codebook_size,), float(dead_code_threshold) * 2.0,
                                          jnp.float32))
      self.rngs = rngs
    else:
      self.usage = None

  # -- lookup -----------------------------------------------------------------------------------
  def table(self) -> jax.Array:
    """[K, D] the codebook as used for lookup (normalised when l2_norm)."""
    e = self.codebook[...]
    return l2_normalize(e) if self.l2_norm else e

  def _project_in(self, z):
    h = z if self.proj_in is None else self.proj_in(z)
    return l2_normalize(h) if self.l2_norm else h

  def _project_out(self, h):
    return h if self.proj_out is None else self.proj_out(h)

  def __call__(self, z, *, train: bool = False) -> QuantizerOutput:
    if z.shape[-1] != self.in_channels:
      raise ValueError(f"VQ expects {self.in_channels} latent channels, got {tuple(z.shape)}")
    h = self._project_in(z.astype(jnp.float32))
    e = self.table()
    idx = nearest_code(jax.lax.stop_gradient(h), jax.lax.stop_gradient(e))
    z_q = jnp.take(e, idx, axis=0)
    commit = jnp.mean(jnp.square(jax.lax.stop_gradient(z_q) - h))
    loss = self.beta * commit
    metrics: Dict[str, jax.Array] = {"commit_loss": commit}
    if self.ema_decay == 0:
      codebook_loss = jnp.mean(jnp.square(z_q - jax.lax.stop_gradient(h)))
      loss = loss + self.codebook_weight * codebook_loss
      metrics["codebook_loss"] = codebook_loss
    if self.entropy_weight > 0:
      flat = h.reshape(-1, self.code_dim)
      d = (jnp.sum(e * e, -1)[None] - 2.0 * flat @ e.T + jnp.sum(flat * flat, -1, keepdims=True))
      sample_ent, codebook_ent = entropy_terms(-d / self.entropy_temperature)
      loss = loss + self.entropy_weight * (sample_ent - codebook_ent)
      metrics["entropy_loss"] = sample_ent - codebook_ent
    # Straight-through: forward value z_q, gradient of the identity w.r.t. h.
    st = h + jax.lax.stop_gradient(z_q - h)
    if train:
      metrics.update(self._update_state(jax.lax.stop_gradient(h), idx))
    metrics.update(usage_metrics(idx, self.vocab_size))
    b = z.shape[0]
    return QuantizerOutput(self._project_out(st), idx.reshape(b, -1), loss, metrics)

  def _update_state(self, h, idx) -> Dict[str, jax.Array]:
    flat = h.reshape(-1, self.code_dim)
    out = {}
    if self.ema_decay > 0:
      count, embed_sum, table = ema_codebook_update(
          self.ema_count[...], self.ema_sum[...], flat, idx, self.ema_decay, self.ema_eps)
      self.ema_count[...], self.ema_sum[...], self.codebook[...] = count, embed_sum, table
    if self.usage is not None:
      hits = jnp.bincount(idx.reshape(-1), length=self.codebook_size).astype(jnp.float32)
      usage = self.usage_decay * self.usage[...] + (1.0 - self.usage_decay) * hits
      table, usage, dead = restart_dead_codes(self.codebook[...], usage, flat,
                                              self.rngs.sample(), self.dead_code_threshold)
      self.codebook[...], self.usage[...] = table, usage
      if self.ema_decay > 0:
        self.ema_count[...] = jnp.where(dead, 1.0, self.ema_count[...])
        self.ema_sum[...] = jnp.where(dead[:, None], table, self.ema_sum[...])
      out["dead_codes"] = dead.sum().astype(jnp.float32)
    return out

  # -- tokens -----------------------------------------------------------------------------------
  def encode(self, z) -> jax.Array:
    """z [B, h, w, C] -> int32 [B, h*w]."""
    h = self._project_in(z.astype(jnp.float32))
    return nearest_code(h, self.table()).reshape(z.shape[0], -1)

  def decode(self, tokens, grid: Tuple[int, int]) -> jax.Array:
    """int32 [B, h*w] -> z_q [B, h, w, C]."""
    e = jnp.take(self.table(), tokens, axis=0)
    return self._project_out(e.reshape(tokens.shape[0], grid[0], grid[1], self.code_dim))

  def num_tokens(self, grid: Tuple[int, int]) -> int:
    return grid[0] * grid[1]

  def token_positions(self, grid: Tuple[int, int]) -> np.ndarray:
    return raster_positions(*grid)
