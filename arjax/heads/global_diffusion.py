"""'global_diffusion': Hi-MAR's global-attention diffusion head (HiDream-ai/himar models/diffloss.py
GlobalDiffLoss, models/models.py DiT).

Unlike MAR's per-token MLP head, one DiT denoises the whole token grid of a step jointly:

  x_t [B, N, C] -> Linear(C, W) + fixed 2-D sin-cos positions
  c   = t_embed(t) [B, 1, W] + Linear(Dd, W)(z) [B, N, W]     (a per-token adaLN condition)
  `depth` adaLN-Zero blocks (arjax Transformer with adaln=True, full attention, `num_heads`,
  MLP width mlp_ratio W) -> LayerNorm without affine, modulated by Linear(silu c) -> Linear(W, C)
  = eps [B, N, C].

The diffusion: 1000-step cosine schedule, eps prediction with a fixed variance (learn_sigma=False:
ADM's FIXED_LARGE, log of [posterior_variance[1], betas[1:]]), MSE loss. The loss of a row is the
squared error summed over the weighted (masked) tokens and divided by N C (ADM's mean_flat over
the whole grid of the masked error, as the official training_losses with `mask`), averaged over
rows. Sampling (`num_sampling_steps`, official 250 respaced steps) draws every token at once; with
`known` tokens the known cells of x are replaced at every step by q_sample(known, t, x_T) with the
step's timestep and the initial noise (the official p_sample_loop with `tokens` and `mask`).
CFG: eps_u + s (eps_c - eps_u) on one doubled call (the official forward_with_cfg).

Simplified against the official DiT: the block norms carry an (initially identity) affine and the
MLP uses exact GELU (arjax's ViT blocks; DiT: no affine, tanh GELU); the stack's final affine
LayerNorm is built but not used (run_blocks), 2 W parameters.

Legend: B batch, N tokens (H x W grid), C channels, W head width, Dd condition width.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from arjax.heads.adaln_mlp import FREQ_DIM, timestep_embedding
from arjax.heads.base import (HEADS, Distribution, GuidedHead, check_targets,
                              continuous_token_dim)
from arjax.heads.diffusion import (check_temperature, q_sample, q_posterior, sampling_schedule,
                                   train_schedule)
from arjax.kernels.masks import MaskSpec
from arjax.nn.layers import AdaLNModulation, Dense
from arjax.nn.transformer import Transformer, TransformerConfig


def _positive(name, v):
  if isinstance(v, bool) or not isinstance(v, int) or v < 1:
    raise ValueError(f"model.global_head.{name}={v!r}; expected an integer >= 1")


@dataclasses.dataclass(frozen=True)
class GlobalDiffusionFields:
  width: int = 512                # W (Hi-MAR-B/L 512, H 768).
  depth: int = 6                  # DiT blocks (B 6, L 8, H 12).
  num_heads: int = 8              # B/L 8, H 12.
  mlp_ratio: int = 4
  num_sampling_steps: int = 250   # the official gen_diffusion's respacing (hard-coded "250").
  train_timesteps: int = 1000

  def __post_init__(self):
    for f in dataclasses.fields(self):
      _positive(f.name, getattr(self, f.name))
    if self.width % self.num_heads:
      raise ValueError(f"model.global_head.width={self.width} is not divisible by "
                       f"num_heads={self.num_heads}")
    if self.num_sampling_steps > self.train_timesteps:
      raise ValueError(f"model.global_head.num_sampling_steps={self.num_sampling_steps}; "
                       f"expected <= train_timesteps={self.train_timesteps}")


def sincos_2d(dim: int, h: int, w: int) -> np.ndarray:
  """DiT's fixed 2-D sin-cos table [h w, dim] (float64): half the channels embed the column
  coordinate, half the row (get_2d_sincos_pos_embed, grid = meshgrid(w, h))."""
  def one(d, pos):
    omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], 1)
  gw, gh = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
  return np.concatenate([one(dim // 2, gw), one(dim // 2, gh)], 1)


def fixed_large_logvar(sched) -> np.ndarray:
  """ADM's FIXED_LARGE log variance per step [K]."""
  t = sched.tables
  if len(t["betas"]) == 1:
    return np.log(t["betas"])
  return np.log(np.append(t["posterior_variance"][1], t["betas"][1:]))


class DiTNet(nnx.Module):
  """(x_t [B, N, C], t float [B] or [], c [B, N, W]) -> eps [B, N, C]."""

  def __init__(self, channels: int, grid, cond_dim: int, f: GlobalDiffusionFields, *,
               rngs: nnx.Rngs, dtype=None):
    w = f.width
    xavier = nnx.initializers.xavier_uniform()
    std = nnx.initializers.normal(stddev=0.02)
    zeros = nnx.initializers.zeros
    self.x_embed = Dense(channels, w, axes=(None, "embed"), rngs=rngs, dtype=dtype,
                         use_bias=True, init=xavier)
    self.c_embed = Dense(cond_dim, w, axes=(None, "embed"), rngs=rngs, dtype=dtype,
                         use_bias=True, init=xavier)
    self.t_fc1 = Dense(FREQ_DIM, w, axes=(None, "embed"), rngs=rngs, dtype=dtype, use_bias=True,
                       init=std)
    self.t_fc2 = Dense(w, w, axes=("embed", "embed"), rngs=rngs, dtype=dtype, use_bias=True,
                       init=std)
    cfg = TransformerConfig(num_layers=f.depth, num_heads=f.num_heads, dim=w,
                            mlp_dim=f.mlp_ratio * w, adaln=True, cond_dim=w, position="none",
                            norm="layernorm", mlp="gelu", bias=True, norm_eps=1e-6)
    cfg.validate()
    self.blocks = Transformer(cfg, rngs=rngs)
    self.final_ada = AdaLNModulation(w, w, 2, rngs=rngs, dtype=dtype, use_bias=True)
    self.final = Dense(w, channels, axes=("embed", None), rngs=rngs, dtype=dtype, use_bias=True,
                       init=zeros)
    self.grid, self.width = tuple(grid), w  # the sin-cos table is fixed: built per call.

  def embed_cond(self, z):
    return self.c_embed(z).astype(jnp.float32)

  def __call__(self, x, t, c):
    b, n = x.shape[:2]
    h = self.x_embed(x).astype(jnp.float32) + jnp.asarray(sincos_2d(self.width, *self.grid),
                                                            jnp.float32)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    temb = self.t_fc2(jax.nn.silu(self.t_fc1(timestep_embedding(t)))).astype(jnp.float32)
    cond = temb[:, None] + c
    h, _ = self.blocks.run_blocks(h, mask=MaskSpec(kind="bidirectional"), rope=None, cond=cond,
                                  caches=None, cache_index=None, deterministic=True)
    sh, sc = self.final_ada(cond)
    mean = h.mean(-1, keepdims=True)
    var = jnp.square(h - mean).mean(-1, keepdims=True)
    h = (h - mean) * jax.lax.rsqrt(var + 1e-6)
    return self.final(h * (1 + sc) + sh).astype(jnp.float32)


def _sample_loop(f: GlobalDiffusionFields, eps_fn, shape, key, temperature, known=None,
                 known_mask=None):
  """Ancestral sampling over the respaced schedule with fixed-large variance. known [B, N, C]
  and known_mask bool [B, N]: cells replaced by q_sample(known, t_i, x_T) at every step."""
  sched = sampling_schedule(f.train_timesteps, f.num_sampling_steps)
  num = len(sched.betas)
  tmap = jnp.asarray(sched.timestep_map, jnp.float32)
  logvar = jnp.asarray(fixed_large_logvar(sched), jnp.float32)
  k0, kloop = jax.random.split(key)
  x_init = jax.random.normal(k0, shape, jnp.float32)

  def body(j, x):
    i = num - 1 - j
    idx = jnp.full(shape[:-1], i, jnp.int32)
    if known is not None:
      x = jnp.where(known_mask[..., None], q_sample(sched, known, idx, x_init), x)
    eps = eps_fn(x, tmap[i])
    x0 = sched.at("sqrt_recip_ac", idx) * x - sched.at("sqrt_recipm1_ac", idx) * eps
    mean, _ = q_posterior(sched, x0, x, idx)
    noise = jax.random.normal(jax.random.fold_in(kloop, j), shape, jnp.float32)
    return mean + (i > 0) * jnp.exp(0.5 * logvar[i]) * noise * temperature

  return jax.lax.fori_loop(0, num, body, x_init)


class GlobalDiffusion(Distribution):
  """A joint distribution over the whole grid [B, N]: c [B, N, W] the embedded conditions."""
  c: jax.Array
  net: Any = struct.field(pytree_node=False, default=None)
  fields: GlobalDiffusionFields = struct.field(pytree_node=False,
                                               default=GlobalDiffusionFields())
  channels: int = struct.field(pytree_node=False, default=0)

  head_name = "global_diffusion"

  def loss(self, targets, key=None, weights=None):
    """(mean over rows of sum_{weighted cells} |eps - eps_hat|^2 / (N C), per-token [B, N])."""
    check_targets(targets, (self.channels,), jnp.float32, self.c.shape[:2], self.head_name)
    if key is None:
      raise ValueError(f"head {self.head_name!r} draws (t, eps) in its loss: pass key=")
    f = self.fields
    sched = train_schedule(f.train_timesteps)
    kt, ke = jax.random.split(key)
    b, n = targets.shape[:2]
    t = jax.random.randint(kt, (b,), 0, f.train_timesteps)       # one timestep per row.
    noise = jax.random.normal(ke, targets.shape, jnp.float32)
    x0 = targets.astype(jnp.float32)
    xt = q_sample(sched, x0, jnp.broadcast_to(t[:, None], (b, n)), noise)
    eps = self.net(xt, t.astype(jnp.float32), self.c)
    per_token = jnp.square(noise - eps).mean(-1)
    w = jnp.ones((b, n), jnp.float32) if weights is None else weights.astype(jnp.float32)
    return (per_token * w).sum(1).mean() / n, per_token

  def sample(self, key, *, temperature: float = 1.0, known=None, known_mask=None):
    check_temperature(self.head_name, temperature)
    shape = self.c.shape[:2] + (self.channels,)
    return _sample_loop(self.fields, lambda x, t: self.net(x, t, self.c), shape, key,
                        temperature, known, known_mask)

  def guide(self, uncond: "GlobalDiffusion", scale) -> "GuidedGlobalDiffusion":
    return GuidedGlobalDiffusion.of(self, uncond, scale)


class GuidedGlobalDiffusion(GuidedHead):
  """CFG on eps inside the reverse loop; scale [B, N]."""
  cond: GlobalDiffusion

  head_name = "global_diffusion (guided)"

  def sample(self, key, *, temperature: float = 1.0, known=None, known_mask=None):
    check_temperature(self.cond.head_name, temperature)
    c = self.cond
    eps_fn = lambda x, t: self.mix(*self.both(c.net, x, t))
    return _sample_loop(c.fields, eps_fn, c.c.shape[:2] + (c.channels,), key, temperature,
                        known, known_mask)


@HEADS.register("global_diffusion", fields=GlobalDiffusionFields)
class GlobalDiffusionHead(nnx.Module):
  """h [B, N, D] over the tokenizer's whole grid -> GlobalDiffusion over [B, N] tokens [C]."""

  token_dtype = jnp.float32
  sample_options = ()

  def __init__(self, dim: int, tokenizer, fields: GlobalDiffusionFields = GlobalDiffusionFields(),
               *, rngs: nnx.Rngs, dtype=None):
    c = continuous_token_dim(tokenizer, head="global_diffusion")
    self.token_shape = (c,)
    self.fields = fields
    self.grid = tuple(tokenizer.grid)
    self.net = DiTNet(c, self.grid, dim, fields, rngs=rngs, dtype=dtype)

  def __call__(self, h, cond=None) -> GlobalDiffusion:
    del cond
    n = self.grid[0] * self.grid[1]
    if h.shape[1] != n:
      raise ValueError(f"head 'global_diffusion' denoises the whole {self.grid[0]}x{self.grid[1]}"
                       f" grid: got hidden states of shape {tuple(h.shape)}, expected [B, {n}, D]")
    return GlobalDiffusion(self.net.embed_cond(h), net=self.net, fields=self.fields,
                           channels=self.token_shape[0])
