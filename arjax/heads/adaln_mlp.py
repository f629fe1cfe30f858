"""The per-token denoising network of MAR's diffusion loss (Li et al. 2024, `SimpleMLPAdaLN`),
shared by the diffusion and flow-matching heads.

    y = TimestepEmbed(t) + Linear(z)                      (the condition of every block)
    x = Linear(x_t)
    x = x + gate * MLP(modulate(LN(x), shift, scale))     (depth residual blocks; shift, scale,
                                                           gate = Linear(SiLU(y)))
    out = Linear(modulate(LN'(x), shift, scale))          (LN' without affine parameters)

TimestepEmbed is the sinusoidal embedding of t (256 frequencies, max period 10000, cos then sin)
followed by Linear-SiLU-Linear. Initialisation as MAR's: every Linear Xavier-uniform with zero
bias, the timestep MLP's weights N(0, 0.02), and the adaLN projections and the output layer zero,
so a fresh network outputs exactly 0.

The condition is split from the call: `embed_cond(z)` gives Linear(z) once per token, and the
inner sampling loops call `net(x_t, t, c)` with that c at every step.

Legend: D width of z (the backbone), W width of the MLP, C channels of x_t, O output channels.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from arjax.nn.layers import Dense, LayerNorm, modulate

FREQ_DIM = 256     # sinusoidal frequencies of the timestep embedding (MAR / DiT).


def timestep_embedding(t, dim: int = FREQ_DIM, max_period: float = 10000.0):
  """t float [...] -> [..., dim]: cos(t f_i) then sin(t f_i), f_i = max_period^(-i / (dim/2))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[..., None] * freqs
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[..., :1])], axis=-1)
  return emb


def _dense(n_in, n_out, rngs, dtype, init=None, axes=(None, None)):
  return Dense(n_in, n_out, axes=axes, rngs=rngs, dtype=dtype, use_bias=True,
               init=init or nnx.initializers.xavier_uniform())


def _plain_layernorm(x, eps=1e-6):
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + eps)


class ResBlock(nnx.Module):
  """x [..., W], y [..., W] -> x + gate * MLP(modulate(LN(x), shift, scale))."""

  def __init__(self, width: int, *, rngs: nnx.Rngs, dtype=None):
    self.norm = LayerNorm(width, rngs=rngs, axes=(None,))
    self.fc1 = _dense(width, width, rngs, dtype)
    self.fc2 = _dense(width, width, rngs, dtype)
    self.ada = _dense(width, 3 * width, rngs, dtype, init=nnx.initializers.zeros)

  def __call__(self, x, y):
    shift, scale, gate = jnp.split(self.ada(jax.nn.silu(y)).astype(jnp.float32), 3, axis=-1)
    h = modulate(self.norm(x), shift, scale)
    h = self.fc2(jax.nn.silu(self.fc1(h))).astype(jnp.float32)
    return x + gate * h


class AdaLNMLP(nnx.Module):
  """MAR's SimpleMLPAdaLN: (x_t [..., C], t [...], c [..., W]) -> [..., O] float32."""

  def __init__(self, in_channels: int, width: int, out_channels: int, z_dim: int, depth: int, *,
               rngs: nnx.Rngs, dtype=None):
    std = nnx.initializers.normal(stddev=0.02)
    self.time_fc1 = _dense(FREQ_DIM, width, rngs, dtype, init=std)
    self.time_fc2 = _dense(width, width, rngs, dtype, init=std)
    self.cond_embed = _dense(z_dim, width, rngs, dtype, axes=("embed", None))
    self.input_proj = _dense(in_channels, width, rngs, dtype)
    self.blocks = nnx.List([ResBlock(width, rngs=rngs, dtype=dtype) for _ in range(depth)])
    self.final_ada = _dense(width, 2 * width, rngs, dtype, init=nnx.initializers.zeros)
    self.final = _dense(width, out_channels, rngs, dtype, init=nnx.initializers.zeros)
    self.width = width

  def embed_cond(self, z):
    """z [..., D] -> c [..., W] float32, the per-token part of the blocks' condition."""
    return self.cond_embed(z).astype(jnp.float32)

  def embed_time(self, t):
    """t float [...] -> [..., W]."""
    return self.time_fc2(jax.nn.silu(self.time_fc1(timestep_embedding(t)))).astype(jnp.float32)

  def __call__(self, x, t, c):
    y = self.embed_time(t) + c
    h = self.input_proj(x).astype(jnp.float32)
    for block in self.blocks:
      h = block(h, y)
    shift, scale = jnp.split(self.final_ada(jax.nn.silu(y)).astype(jnp.float32), 2, axis=-1)
    return self.final(modulate(_plain_layernorm(h), shift, scale)).astype(jnp.float32)
