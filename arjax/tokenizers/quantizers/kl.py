"""Diagonal-Gaussian latents with a KL penalty (the KL-regularised autoencoder of latent
diffusion, Rombach et al. 2022; MAR's KL-16, Li et al. 2024; GIVT's beta-VAE, Tschannen et al.
2023).

The encoder outputs moments [B, h, w, 2D]: a mean and a log-variance (clipped to [-30, 20] as
LDM) per latent channel. Training decodes a posterior sample z = mu + sigma * eps and adds
kl_weight * KL(N(mu, sigma^2) || N(0, I)), with the closed form per element
0.5 (mu^2 + sigma^2 - 1 - log sigma^2). LDM sums it over each image's latent elements and
averages over the batch (`kl_reduction='sum'`, weight 1e-6); 'mean' averages over elements.

Continuous tokens: `encode` returns the posterior mean (or a sample) times `scale_factor`
(MAR: 0.2325, so that the tokens have roughly unit variance for the diffusion head), as float
[B, h*w, D]; `decode` divides by it. `vocab_size` is 0.

Legend: B batch, h/w latent grid, D latent dim, N = h*w.
"""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from arjax.tokenizers.quantizers.base import QuantizerOutput, raster_positions

FIELDS = {
    "latent_dim": (16, "D, latent channels (the encoder side supplies 2D moments)"),
    "kl_weight": (1e-6, "weight of the KL term (LDM/MAR 1e-6; GIVT beta 5e-5)"),
    "kl_reduction": ("sum", "'sum' over each image's latents then batch mean (LDM) | 'mean'"),
    "scale_factor": (0.2325, "tokens = latents * scale_factor (MAR 0.2325)"),
    "sample_tokens": (False, "encode() samples the posterior instead of taking its mean"),
}
LOGVAR_RANGE = (-30.0, 20.0)


def split_moments(moments) -> Tuple[jax.Array, jax.Array]:
  """[..., 2D] -> (mean [..., D], log-variance [..., D] clipped as LDM)."""
  mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
  return mean, jnp.clip(logvar, *LOGVAR_RANGE)


def kl_standard_normal(mean, logvar):
  """Per-element KL(N(mean, exp(logvar)) || N(0, 1))."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


class DiagonalGaussian(nnx.Module):
  """moments [B, h, w, 2D] -> z [B, h, w, D] (sampled in training), KL loss."""

  FIELDS = FIELDS

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs, latent_dim: int = 16,
               kl_weight: float = 1e-6, kl_reduction: str = "sum", scale_factor: float = 0.2325,
               sample_tokens: bool = False):
    del in_channels  # the moments width is always 2D; the model maps its latents to it.
    if kl_reduction not in ("sum", "mean"):
      raise ValueError(f"quantizer.kl_reduction={kl_reduction!r}; expected 'sum' or 'mean'")
    if scale_factor <= 0:
      raise ValueError(f"quantizer.scale_factor={scale_factor} must be positive")
    self.latent_dim = latent_dim
    self.in_channels = 2 * latent_dim
    self.out_channels = latent_dim
    self.vocab_size = 0
    self.kl_weight = kl_weight
    self.kl_reduction = kl_reduction
    self.scale_factor = scale_factor
    self.sample_tokens = sample_tokens
    self.rngs = rngs

  def _check(self, moments):
    if moments.shape[-1] != self.in_channels:
      raise ValueError(f"KL quantizer expects {self.in_channels} moment channels (2 x "
                       f"quantizer.latent_dim={self.latent_dim}), got {tuple(moments.shape)}")

  def kl(self, mean, logvar) -> jax.Array:
    """Scalar KL term before weighting, reduced as `kl_reduction`."""
    per = kl_standard_normal(mean, logvar)
    if self.kl_reduction == "sum":
      return jnp.mean(jnp.sum(per.reshape(per.shape[0], -1), axis=-1))
    return jnp.mean(per)

  def __call__(self, moments, *, train: bool = False) -> QuantizerOutput:
    self._check(moments)
    mean, logvar = split_moments(moments)
    std = jnp.exp(0.5 * logvar)
    if train:
      z = mean + std * jax.random.normal(self.rngs.sample(), mean.shape, mean.dtype)
    else:
      z = mean
    kl = self.kl(mean, logvar)
    b = moments.shape[0]
    tokens = (z * self.scale_factor).reshape(b, -1, self.latent_dim)
    metrics = {"kl": kl, "posterior_std": jnp.mean(std)}
    return QuantizerOutput(z, tokens, self.kl_weight * kl, metrics)

  def encode(self, moments) -> jax.Array:
    """moments [B, h, w, 2D] -> float32 [B, h*w, D] scaled latents."""
    self._check(moments)
    mean, logvar = split_moments(moments)
    z = mean
    if self.sample_tokens:
      z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(self.rngs.sample(), mean.shape)
    return (z * self.scale_factor).reshape(moments.shape[0], -1, self.latent_dim)

  def decode(self, tokens, grid: Tuple[int, int]) -> jax.Array:
    """float [B, h*w, D] scaled latents -> z [B, h, w, D]."""
    z = tokens.astype(jnp.float32) / self.scale_factor
    return z.reshape(tokens.shape[0], grid[0], grid[1], self.latent_dim)

  def num_tokens(self, grid: Tuple[int, int]) -> int:
    return grid[0] * grid[1]

  def token_positions(self, grid: Tuple[int, int]) -> np.ndarray:
    return raster_positions(*grid)
