"""Flow-matching head (rectified flow per token, as NextStep-1's head; FlowAR, xAR).

Convention (NextStep-1 and FlowAR; xAR's is the reverse in time): t runs from noise at t = 0 to
data at t = 1 on the straight path

    x_t = t * x + (1 - t) * eps,   eps ~ N(0, I),   velocity  v = dx_t/dt = x - eps.

A per-token network v_theta(x_t | t, z) (arjax.heads.adaln_mlp.AdaLNMLP, MAR's adaLN MLP with C
outputs; the timestep embedding sees 1000 t so its frequencies cover the range they cover for the
diffusion head's integer timesteps) is trained with the MSE mean_c (v_theta - (x - eps))^2,
`batch_mul` independent (t, eps) draws per token (NextStep-1: 4). t is drawn logit-normal,
t = sigmoid(mu + sigma n), n ~ N(0, 1) (NextStep-1 / SD3: mu 0, sigma 1), or uniform on [0, 1].

Sampling integrates dx/dt = v_theta from t = 0 to 1 on the uniform grid t_k = k / S with
S = `num_sampling_steps`: Euler, x_{k+1} = x_k + v(x_k, t_k) / S, or Heun (the trapezoid
predictor-corrector, two network calls per step), from x_0 = temperature * eps (the temperature
scales the prior noise). Guidance (`Flow.guide`): at every step v = v_u + s (v_c - v_u) from one
network call on both halves with the same x_t. `log_prob` raises (no likelihood is computed).

Legend: B batch, L positions, D width of h, W width of the MLP, C channels of a token,
M = batch_mul, S sampling steps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from arjax.heads.adaln_mlp import AdaLNMLP
from arjax.heads.base import (HEADS, Distribution, GuidedHead, check_targets,
                              continuous_token_dim, weighted_mean)
from arjax.heads.diffusion import _positive_int, check_temperature

SOLVERS = ("euler", "heun")
TIME_SAMPLING = ("logit_normal", "uniform")
TIME_SCALE = 1000.0   # the network's timestep embedding sees TIME_SCALE * t.


@dataclasses.dataclass(frozen=True)
class FlowFields:
  width: int = 1024                  # W of the velocity MLP (MAR-B-size head).
  depth: int = 6                     # residual adaLN blocks.
  batch_mul: int = 4                 # M (t, eps) draws per token in the loss (NextStep-1: 4).
  num_sampling_steps: int = 20       # S ODE steps at sampling (NextStep-1: 20).
  solver: str = "euler"              # 'euler' | 'heun' (Heun: 2 network calls per step).
  time_sampling: str = "logit_normal"  # 'logit_normal' | 'uniform' training t.
  logit_mean: float = 0.0            # mu of the logit-normal t.
  logit_std: float = 1.0             # sigma of the logit-normal t.

  def __post_init__(self):
    for name in ("width", "depth", "batch_mul", "num_sampling_steps"):
      _positive_int(name, getattr(self, name))
    if self.solver not in SOLVERS:
      raise ValueError(f"model.head.solver={self.solver!r}; expected one of {list(SOLVERS)}")
    if self.time_sampling not in TIME_SAMPLING:
      raise ValueError(f"model.head.time_sampling={self.time_sampling!r}; expected one of "
                       f"{list(TIME_SAMPLING)}")
    if not math.isfinite(self.logit_mean):
      raise ValueError(f"model.head.logit_mean={self.logit_mean!r}; expected a finite number")
    if not (math.isfinite(self.logit_std) and self.logit_std > 0):
      raise ValueError(f"model.head.logit_std={self.logit_std!r}; expected a finite number > 0")


def interpolate(x, noise, t):
  """x_t = t x + (1 - t) noise; t broadcastable against x without its channel axis."""
  t = jnp.asarray(t, jnp.float32)[..., None]
  return t * x + (1.0 - t) * noise


def integrate(velocity, x0, num_steps: int, solver: str = "euler"):
  """x(1) of dx/dt = velocity(x, t) from x(0) = x0 on the grid t_k = k / S (t a float32 scalar).

  Euler: x_{k+1} = x_k + h v(x_k, t_k). Heun: x' = x_k + h v(x_k, t_k),
  x_{k+1} = x_k + h/2 (v(x_k, t_k) + v(x', t_{k+1}))."""
  h = 1.0 / num_steps

  def body(k, x):
    t = k.astype(jnp.float32) * h
    v = velocity(x, t)
    if solver == "euler":
      return x + h * v
    v_next = velocity(x + h * v, t + h)
    return x + 0.5 * h * (v + v_next)

  return jax.lax.fori_loop(0, num_steps, body, x0)


def draw_times(key, shape, fields: FlowFields):
  if fields.time_sampling == "uniform":
    return jax.random.uniform(key, shape, jnp.float32)
  return jax.nn.sigmoid(fields.logit_mean + fields.logit_std * jax.random.normal(key, shape))


class Flow(Distribution):
  """c [B, L, W]: the embedded condition Linear(z) of each position; `net` the head's network
  (static: called inside the trace that built this distribution)."""
  c: jax.Array
  net: Any = struct.field(pytree_node=False, default=None)
  fields: FlowFields = struct.field(pytree_node=False, default=FlowFields())
  channels: int = struct.field(pytree_node=False, default=0)

  head_name = "flow"

  def velocity(self, x, t):
    return self.net(x, TIME_SCALE * t, self.c)

  def loss(self, targets, key=None, weights=None):
    """(weighted mean, per-token [B, L]) velocity MSE averaged over M (t, eps) draws."""
    check_targets(targets, (self.channels,), jnp.float32, self.c.shape[:2], self.head_name)
    if key is None:
      raise ValueError(f"head {self.head_name!r} draws (t, eps) in its loss: pass key=")
    m = self.fields.batch_mul
    kt, ke = jax.random.split(key)
    x = jnp.broadcast_to(targets.astype(jnp.float32), (m,) + targets.shape)
    t = draw_times(kt, x.shape[:-1], self.fields)
    noise = jax.random.normal(ke, x.shape, jnp.float32)
    v = self.net(interpolate(x, noise, t), TIME_SCALE * t, self.c)
    per_token = jnp.square(v - (x - noise)).mean(-1).mean(0)
    return weighted_mean(per_token, weights), per_token

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.head_name, temperature)
    x0 = temperature * jax.random.normal(key, self.c.shape[:2] + (self.channels,), jnp.float32)
    return integrate(self.velocity, x0, self.fields.num_sampling_steps, self.fields.solver)

  def guide(self, uncond: "Flow", scale) -> "GuidedFlow":
    return GuidedFlow.of(self, uncond, scale)


class GuidedFlow(GuidedHead):
  """CFG on the velocity at every ODE step; scale [B, L]."""
  cond: Flow

  head_name = "flow (guided)"

  def velocity(self, x, t):
    return self.mix(*self.both(self.cond.net, x, TIME_SCALE * t))

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.cond.head_name, temperature)
    f = self.cond.fields
    x0 = temperature * jax.random.normal(key, self.cond.c.shape[:2] + (self.cond.channels,),
                                         jnp.float32)
    return integrate(self.velocity, x0, f.num_sampling_steps, f.solver)


@HEADS.register("flow", fields=FlowFields)
class FlowHead(nnx.Module):
  """h [B, L, D] -> Flow over continuous tokens [B, L, C] (C = tokenizer.token_dim)."""

  token_dtype = jnp.float32
  sample_options = ()   # the temperature only; steps and solver are fields.

  def __init__(self, dim: int, tokenizer, fields: FlowFields = FlowFields(), *,
               rngs: nnx.Rngs, dtype=None):
    c = continuous_token_dim(tokenizer, head="flow")
    self.token_shape = (c,)
    self.fields = fields
    self.net = AdaLNMLP(c, fields.width, c, dim, fields.depth, rngs=rngs, dtype=dtype)

  def __call__(self, h, cond=None) -> Flow:
    del cond
    return Flow(self.net.embed_cond(h), net=self.net, fields=self.fields,
                channels=self.token_shape[0])
