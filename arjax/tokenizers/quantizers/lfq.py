"""Lookup-free quantization (MAGVIT-v2; Yu et al. 2024, "Language Model Beats Diffusion --
Tokenizer is Key to Visual Generation").

Each of d channels is quantised to its sign, q_i = +1 if z_i > 0 else -1, so the implicit
codebook is {-1, +1}^d of size 2^d and needs no lookup. The index reads the bits (q_i > 0) with
the first channel most significant: index = sum_i [q_i > 0] 2^(d-1-i).

Loss: beta * ||z - sg(q)||^2 (commitment) plus the entropy penalty
entropy_weight * (E_z[H(p(c|z))] - gamma * H(E_z[p(c|z)])), with p(c|z) proportional to
exp(-||z - c||^2 / tau) over all 2^d codes. Because ||z - c||^2 = ||z||^2 + d - 2 z.c, that
distribution factorises over bits, p(bit_i = 1 | z) = sigmoid(4 z_i / tau), so the per-sample
entropy is exactly the sum of per-bit binary entropies. The codebook (batch-mean) entropy does
not factorise: it is computed over all 2^d codes when d <= `max_exact_entropy_bits` and as the
sum of the per-bit entropies of the mean bit probabilities (an upper bound, Open-MAGVIT2's
shortcut) above that.

Legend: B batch, h/w latent grid, C encoder channels, d code bits, K = 2^d, M = B*h*w.
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.tokenizers.conv import Linear
from arjax.tokenizers.quantizers.base import (QuantizerOutput, entropy_terms, raster_positions,
                                              usage_metrics)

FIELDS = {
    "code_dim": (14, "d, bits per token; codebook size 2^d"),
    "beta": (0.25, "commitment weight"),
    "entropy_weight": (0.1, "weight of the entropy penalty"),
    "codebook_entropy_weight": (1.0, "gamma, weight of the codebook entropy inside the penalty"),
    "entropy_temperature": (0.01, "tau in p(c|z) ~ exp(-||z - c||^2 / tau)"),
    "max_exact_entropy_bits": (12, "exact codebook entropy over 2^d codes up to this d"),
}


def _binary_entropy_from_logits(x):
  """Entropy of Bernoulli(sigmoid(x)), stable for large |x| (a clipped p rounds to 1 in float32
  and gives 0 * log(0) = NaN)."""
  p = jax.nn.sigmoid(x)
  return p * jax.nn.softplus(-x) + (1.0 - p) * jax.nn.softplus(x)


def _binary_entropy(p):
  p = jnp.clip(p, 1e-6, 1.0 - 1e-6)
  return -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))


def all_codes(d: int) -> np.ndarray:
  """float32 [2^d, d]: code of every index (row k is the code whose index is k)."""
  k = np.arange(2 ** d)[:, None]
  bits = (k >> np.arange(d - 1, -1, -1)[None, :]) & 1
  return (2.0 * bits - 1.0).astype(np.float32)


class LFQ(nnx.Module):
  """z [B, h, w, C] -> z_q [B, h, w, C] with codes in {-1, 1}^d, tokens int32 [B, h*w]."""

  FIELDS = FIELDS

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs, code_dim: int = 14, beta: float = 0.25,
               entropy_weight: float = 0.1, codebook_entropy_weight: float = 1.0,
               entropy_temperature: float = 0.01, max_exact_entropy_bits: int = 12):
    if not 1 <= code_dim <= 30:
      raise ValueError(f"quantizer.code_dim={code_dim}; LFQ needs 1..30 bits (int32 indices)")
    self.dim = code_dim
    self.in_channels = self.out_channels = in_channels
    self.vocab_size = 2 ** code_dim
    self.beta = beta
    self.entropy_weight = entropy_weight
    self.gamma = codebook_entropy_weight
    self.tau = entropy_temperature
    self.max_exact = max_exact_entropy_bits
    if in_channels != code_dim:
      self.proj_in = Linear(in_channels, code_dim, rngs=rngs, axes=("mlp", None))
      self.proj_out = Linear(code_dim, in_channels, rngs=rngs, axes=(None, "mlp"))
    else:
      self.proj_in = self.proj_out = None

  def codes_to_indices(self, codes) -> jax.Array:
    """codes [..., d] in {-1, 1} -> int32 [...]."""
    weights = jnp.asarray(2 ** np.arange(self.dim - 1, -1, -1), jnp.int32)
    return jnp.sum((codes > 0).astype(jnp.int32) * weights, axis=-1)

  def indices_to_codes(self, idx) -> jax.Array:
    """int [...] -> codes [..., d] in {-1, 1}."""
    shifts = jnp.asarray(np.arange(self.dim - 1, -1, -1), jnp.int32)
    bits = (jnp.asarray(idx, jnp.int32)[..., None] >> shifts) & 1
    return 2.0 * bits.astype(jnp.float32) - 1.0

  def entropy(self, z) -> Tuple[jax.Array, jax.Array]:
    """(mean per-sample entropy, codebook entropy) of p(c|z) for z [..., d]."""
    flat = z.reshape(-1, self.dim).astype(jnp.float32)
    bit_logits = 4.0 * flat / self.tau
    p_bits = jax.nn.sigmoid(bit_logits)
    sample = jnp.mean(jnp.sum(_binary_entropy_from_logits(bit_logits), axis=-1))
    if self.dim <= self.max_exact:
      logits = (2.0 / self.tau) * flat @ jnp.asarray(all_codes(self.dim)).T
      _, codebook = entropy_terms(logits)
    else:
      codebook = jnp.sum(_binary_entropy(p_bits.mean(axis=0)))
    return sample, codebook

  def __call__(self, z, *, train: bool = False) -> QuantizerOutput:
    del train
    h = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    q = jnp.where(h > 0, 1.0, -1.0)
    commit = jnp.mean(jnp.square(h - jax.lax.stop_gradient(q)))
    sample_ent, codebook_ent = self.entropy(h)
    loss = self.beta * commit + self.entropy_weight * (sample_ent - self.gamma * codebook_ent)
    st = h + jax.lax.stop_gradient(q - h)
    idx = self.codes_to_indices(q)
    metrics = {"commit_loss": commit, "sample_entropy": sample_ent,
               "codebook_entropy": codebook_ent}
    metrics.update(usage_metrics(idx, self.vocab_size))
    out = st if self.proj_out is None else self.proj_out(st)
    return QuantizerOutput(out, idx.reshape(z.shape[0], -1), loss, metrics)

  def encode(self, z) -> jax.Array:
    h = z.astype(jnp.float32) if self.proj_in is None else self.proj_in(z.astype(jnp.float32))
    return self.codes_to_indices(h > 0).reshape(z.shape[0], -1)

  def decode(self, tokens, grid: Tuple[int, int]) -> jax.Array:
    codes = self.indices_to_codes(tokens).reshape(tokens.shape[0], grid[0], grid[1], self.dim)
    return codes if self.proj_out is None else self.proj_out(codes)

  def num_tokens(self, grid: Tuple[int, int]) -> int:
    return grid[0] * grid[1]

  def token_positions(self, grid: Tuple[int, int]) -> np.ndarray:
    return raster_positions(*grid)
