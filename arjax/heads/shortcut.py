"""Shortcut-model head: a flow head that also sees its step size (FAR-fast, arXiv 2504.18391; the
shortcut model of Frans et al. 2024, "One Step Diffusion via Shortcut Models").

Time convention: arjax.heads.flow's, t = 0 noise, t = 1 data,

    x_t = t x + (1 - t) eps,   eps ~ N(0, I),   velocity  v = x - eps.

The network s(x_t, t, d | z) (arjax.heads.adaln_mlp.AdaLNMLP; the step size enters as a second
timestep embedding, Linear-SiLU-Linear of the sinusoid of 1000 d, added to the condition) is the
average velocity over a step of size d: x_{t+d} ~ x_t + d s(x_t, t, d). Training draws `batch_mul`
= M (t, eps) pairs per token; `consistency_draws` = K of them (default 1 of 4, i.e. a quarter
of the batch, the shortcut models' `bootstrap_every` = 4) use the self-consistency target and the
other M - K flow matching at d = 0:

  flow        t ~ flow's time_sampling (default uniform), || s(x_t, t, 0) - (x - eps) ||^2;
  consistency j ~ U{0 .. log2(max_steps) - 1}, 2d = 2^-j, d = 2^-(j+1), t = 2d i with
              i ~ U{0 .. 2^j - 1} (so t + 2d <= 1), and with s1 = s(x_t, t, d),
              x' = x_t + d s1, s2 = s(x', t + d, d), the target stop_gradient((s1 + s2) / 2):
              || s(x_t, t, 2d) - sg[(s1 + s2) / 2] ||^2.

Each loss is the mean over channels, the per-token loss the mean over the M draws. The finest
step d = 1 / max_steps is the flow network itself: `step` feeds d = 0 for any d <= 1 / max_steps
(the shortcut models label their flow draws with the finest step likewise), so the chain of
targets bottoms out in the flow-matched velocity.

Sampling: S = num_sampling_steps (a power of two <= max_steps) Euler steps of size d = 1 / S,
x_{k+1} = x_k + d s(x_k, k d, d), from x_0 = temperature * eps: 1 network call per step (1, 2,
4 or 8 steps in FAR-fast). Guidance (`Shortcut.guide`): s = s_u + w (s_c - s_u) at every step.

Legend: B batch, L positions, D width of h, W width of the MLP, C channels, M = batch_mul,
K = consistency_draws, S sampling steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from arjax.heads.adaln_mlp import FREQ_DIM, AdaLNMLP, _dense, timestep_embedding
from arjax.heads.base import (HEADS, Distribution, GuidedHead, check_targets,
                              continuous_token_dim, weighted_mean)
from arjax.heads.diffusion import _positive_int, check_temperature
from arjax.heads.flow import TIME_SAMPLING, TIME_SCALE, draw_times, interpolate
from arjax.registry import ranged


@dataclasses.dataclass(frozen=True)
class ShortcutFields:
  width: int = 1024                  # W of the MLP.
  depth: int = 6                     # residual adaLN blocks.
  batch_mul: int = 4                 # M (t, eps) draws per token in the loss.
  consistency_draws: int = ranged(1, lo=0, integer=True)  # K of the M: self-consistency.
  max_steps: int = ranged(128, lo=2, integer=True)  # finest grid 1 / max_steps (a power of 2).
  num_sampling_steps: int = ranged(4, lo=1, integer=True)  # S (a power of 2 <= max_steps).
  time_sampling: str = "uniform"     # the flow draws' t: 'uniform' | 'logit_normal'.
  logit_mean: float = 0.0
  logit_std: float = 1.0

  def __post_init__(self):
    for name in ("width", "depth", "batch_mul"):
      _positive_int(name, getattr(self, name))
    if self.consistency_draws > self.batch_mul:
      raise ValueError(f"model.head.consistency_draws={self.consistency_draws!r}; expected an "
                       f"integer in [0, batch_mul={self.batch_mul}]")
    m = self.max_steps
    if m & (m - 1):
      raise ValueError(f"model.head.max_steps={m!r}; expected a power of two >= 2 (shortcut "
                       "models: 128)")
    s = self.num_sampling_steps
    if s & (s - 1) or s > m:
      raise ValueError(f"model.head.num_sampling_steps={s!r}; expected a power of two in [1, "
                       f"max_steps={m}] (FAR-fast: 1, 2, 4 or 8)")
    if self.time_sampling not in TIME_SAMPLING:
      raise ValueError(f"model.head.time_sampling={self.time_sampling!r}; expected one of "
                       f"{list(TIME_SAMPLING)}")
    if not (math.isfinite(self.logit_std) and self.logit_std > 0):
      raise ValueError(f"model.head.logit_std={self.logit_std!r}; expected a finite number > 0")


def consistency_target(net, x_t, t, d):
  """sg[(s(x_t, t, d) + s(x_t + d s(x_t, t, d), t + d, d)) / 2]: the target of s(x_t, t, 2d).
  net(x, t, d) -> [..., C]; t, d [...] (no channel axis)."""
  s1 = net(x_t, t, d)
  s2 = net(x_t + d[..., None] * s1, t + d, d)
  return jax.lax.stop_gradient(0.5 * (s1 + s2))


def shortcut_integrate(step_fn, x0, num_steps: int):
  """x(1) by S steps of size d = 1 / S: x <- x + d step_fn(x, t_k, d), t_k = k d."""
  d = 1.0 / num_steps

  def body(k, x):
    return x + d * step_fn(x, k.astype(jnp.float32) * d, jnp.float32(d))

  return jax.lax.fori_loop(0, num_steps, body, x0)


class Shortcut(Distribution):
  """c [B, L, W]: the embedded condition of each position; `head` the module (static)."""
  c: jax.Array
  head: Any = struct.field(pytree_node=False, default=None)
  fields: ShortcutFields = struct.field(pytree_node=False, default=ShortcutFields())
  channels: int = struct.field(pytree_node=False, default=0)

  head_name = "shortcut"

  def step(self, x, t, d, c=None):
    """s(x_t, t, d | c): x [..., C], t and d broadcastable to x without its channel axis. The
    finest step d <= 1 / max_steps is the flow network (d = 0 in)."""
    c = self.c if c is None else c
    d = jnp.asarray(d, jnp.float32)
    return self.head.step(x, t, jnp.where(d * self.fields.max_steps <= 1.0, 0.0, d), c)

  def loss(self, targets, key=None, weights=None):
    """(weighted mean, per-token [B, L]): M - K flow draws at d = 0 and K self-consistency ones
    (see the module docstring)."""
    check_targets(targets, (self.channels,), jnp.float32, self.c.shape[:2], self.head_name)
    if key is None:
      raise ValueError(f"head {self.head_name!r} draws (t, d, eps) in its loss: pass key=")
    f = self.fields
    m, k = f.batch_mul, f.consistency_draws
    kt, ke, kj, ki = jax.random.split(key, 4)
    x = jnp.broadcast_to(targets.astype(jnp.float32), (m,) + targets.shape)
    noise = jax.random.normal(ke, x.shape, jnp.float32)
    parts = []
    if m - k:  # flow matching at d = 0
      xf, nf = x[k:], noise[k:]
      t = draw_times(kt, xf.shape[:-1], f)
      s = self.step(interpolate(xf, nf, t), t, jnp.zeros_like(t))
      parts.append(jnp.square(s - (xf - nf)).mean(-1))
    if k:      # self-consistency: s(x_t, t, 2d) -> sg[(s1 + s2) / 2]
      xc, nc = x[:k], noise[:k]
      lead = xc.shape[:-1]
      log_m = int(math.log2(f.max_steps))
      j = jax.random.randint(kj, lead, 0, log_m)
      big = jnp.exp2(-j.astype(jnp.float32))            # 2d = 2^-j
      i = jnp.floor(jax.random.uniform(ki, lead) * jnp.exp2(j.astype(jnp.float32)))
      t = i * big
      x_t = interpolate(xc, nc, t)
      target = consistency_target(self.step, x_t, t, 0.5 * big)
      parts.insert(0, jnp.square(self.step(x_t, t, big) - target).mean(-1))
    per_token = jnp.concatenate(parts, 0).mean(0)
    return weighted_mean(per_token, weights), per_token

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.head_name, temperature)
    x0 = temperature * jax.random.normal(key, self.c.shape[:2] + (self.channels,), jnp.float32)
    return shortcut_integrate(self.step, x0, self.fields.num_sampling_steps)

  def guide(self, uncond: "Shortcut", scale) -> "GuidedShortcut":
    return GuidedShortcut.of(self, uncond, scale)


class GuidedShortcut(GuidedHead):
  """CFG on the shortcut velocity at every step; scale [B, L]."""
  cond: Shortcut

  head_name = "shortcut (guided)"

  def step(self, x, t, d):
    return self.mix(*self.both(self.cond.step, x, t, d))

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.cond.head_name, temperature)
    x0 = temperature * jax.random.normal(key, self.cond.c.shape[:2] + (self.cond.channels,),
                                         jnp.float32)
    return shortcut_integrate(self.step, x0, self.cond.fields.num_sampling_steps)


@HEADS.register("shortcut", fields=ShortcutFields)
class ShortcutHead(nnx.Module):
  """h [B, L, D] -> Shortcut over continuous tokens [B, L, C] (C = tokenizer.token_dim)."""

  token_dtype = jnp.float32
  sample_options = ()

  def __init__(self, dim: int, tokenizer, fields: ShortcutFields = ShortcutFields(), *,
               rngs: nnx.Rngs, dtype=None):
    c = continuous_token_dim(tokenizer, head="shortcut")
    self.token_shape = (c,)
    self.fields = fields
    self.net = AdaLNMLP(c, fields.width, c, dim, fields.depth, rngs=rngs, dtype=dtype)
    std = nnx.initializers.normal(stddev=0.02)
    self.step_fc1 = _dense(FREQ_DIM, fields.width, rngs, dtype, init=std)
    self.step_fc2 = _dense(fields.width, fields.width, rngs, dtype, init=std)

  def step(self, x, t, d, c):
    """s(x, t, d | c) [..., C]; t, d broadcastable to x[..., 0], c [..., W]."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:-1])
    d = jnp.broadcast_to(jnp.asarray(d, jnp.float32), x.shape[:-1])
    e = self.step_fc2(jax.nn.silu(self.step_fc1(timestep_embedding(TIME_SCALE * d))))
    return self.net(x, TIME_SCALE * t, c + e.astype(jnp.float32))

  def __call__(self, h, cond=None) -> Shortcut:
    del cond
    return Shortcut(self.net.embed_cond(h), head=self, fields=self.fields,
                    channels=self.token_shape[0])
