"""ARINAR head (Zhao, Gould, Zheng 2025, "ARINAR: Bi-Level Autoregressive Feature-by-Feature
Generative Models"; official code Qinyu-Allen-Zhao/Arinar, model_head/arhead_gmm.py): an inner
autoregressive model over the C features of each token, conditioned on the backbone's output z.

Per token (z [D] from the backbone, x [C] the token):

    p(x | z) = prod_{j<C} p(x_j | x_<j, z),   p(x_j | .) a 1-D mixture of K Gaussians.

The inner network is a small causal transformer over the C feature positions (official: one
VAR-style adaLN block, width 768, 16 heads, K = 4):

    input_0 = cond_proj(z) + start_token,  input_j = input_proj(x_{j-1})  (j = 1..C-1)   [C, W]
    h = input + pos_embedding                                                            [C, W]
    h = h + gamma1 * Attn_causal(LN(h) (1 + scale1) + shift1)       (depth blocks; gamma, scale,
    h = h + gamma2 * FFN(LN(h) (1 + scale2) + shift2)                shift = Linear(SiLU(z)))
    out_j = Linear(LN(h_j) (1 + scale) + shift)   -> K means, K log-variances, K logits   [C, 3K]

LN has no affine parameters (VAR's ln_wo_grad, eps 1e-6); the attention is VAR's (qkv without a
key bias, separate q and v biases, softmax scale 0.25 / sqrt(head_dim)); FFN is fc1-GELU(tanh)-fc2
with 4x width. Initialisation as the official init_weights: every Linear, the start token and the
position table N(0, 0.02) with zero biases (torch's trunc_normal_ at std 0.02 truncates at +-2,
i.e. 100 sigma), the output Linear's weights x 0.02, the final adaLN x 0.5, each block's adaLN
gammas x 1e-5 and its scales/shifts x 0.5, the attention output and fc2 / sqrt(2 depth).

Loss: the exact NLL -sum_j log p(x_j | x_<j, z) in nats per token, teacher forced (one causal pass
over the C positions), with p(x_j) = sum_k pi_k N(x_j; mu_k, exp(logvar_k)). The official loss
drops the constant C/2 log(2 pi); it is included here (same gradient), so `log_prob` is the
log-density. `log_prob` and `confidence` are tractable (confidence: the log-density with the
standard deviations scaled by the temperature).

Sampling: C sequential inner steps with a key/value cache (lax.scan over the features): at step j
the network sees the features drawn so far, a component k ~ Cat(pi) is drawn, then
x_j = mu_k + t sigma_k eps: the temperature t scales the standard deviations (official); t = 0 is
greedy (the most likely component's mean at every feature).

Guidance (`ARINAR.guide` -> `GuidedARINAR`): the official sampling-importance-resampling, per
feature step: the conditional and unconditional inner networks see the same drawn prefix (one
call on the doubled batch); M = `cfg_proposals` proposals x^(m) are drawn from the conditional
1-D GMM at temperature t; each gets the log weight (s - 1)(log p_c(x^(m)) - log p_u(x^(m))) with
the untempered densities (as the official get_log_likelihood, which ignores the temperature); one
proposal is resampled with probability softmax of the log weights, and it is fed to both halves.
At t = 1 and M -> infinity this draws from p_c^s / p_u^(s-1) normalised, per feature; s = 1 gives
uniform weights, i.e. a conditional draw. Not implemented from the official options: feature
groups (`feature_group` > 1), the normalising flow (`use_nf`) and the temperature/CFG schedules
across features (`bilevel_schedule`; the official default 'constant' is what is here).

Parity: tests/convert/test_arinar.py runs this head on the official ARHead_gmm's weights and
matches its teacher-forced GMMs and NLL (fixture written with a flash-attention stand-in: the
official attention is causal only when flash-attn is installed; its fallback ignores `causal`).

Legend: B batch, L positions, D width of z, W inner width, H heads, C features per token,
K mixture components, N = B L tokens, M SIR proposals.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from arjax.heads.base import (HEADS, Distribution, broadcast_scale, check_targets,
                              continuous_token_dim, weighted_mean)
from arjax.nn.layers import Dense

_LOG_2PI = math.log(2.0 * math.pi)
LN_EPS = 1e-6


def _positive_int(name: str, value):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"model.head.{name}={value!r}; expected an integer >= 1")


@dataclasses.dataclass(frozen=True)
class ARINARFields:
  num_components: int = 4      # K Gaussians per feature (ARINAR-B: 4).
  width: int = 768             # W of the inner transformer (ARINAR-B: 768).
  depth: int = 1               # inner adaLN transformer blocks (ARINAR: 1).
  num_heads: int = 16          # attention heads of the inner blocks (official: 16).
  cfg_proposals: int = 1000    # M SIR proposals per feature under CFG (official: 1000).

  def __post_init__(self):
    for name in ("num_components", "width", "depth", "num_heads", "cfg_proposals"):
      _positive_int(name, getattr(self, name))
    if self.width % self.num_heads:
      raise ValueError(f"model.head.width={self.width} is not divisible by model.head.num_heads="
                       f"{self.num_heads}; expected width a multiple of num_heads")


def check_temperature(head: str, temperature):
  """One line unless temperature is a finite number >= 0 (0: greedy)."""
  try:
    value = float(temperature)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # traced: validated by the sampler.
  if not (math.isfinite(value) and value >= 0):
    raise ValueError(f"head {head!r} samples at temperature >= 0 (a finite number scaling its "
                     f"standard deviations; 0 is greedy), got temperature={temperature!r}")


# -- 1-D Gaussian mixtures (the per-feature distributions) ---------------------------------------
def gmm_log_prob(x, logits, means, logvars):
  """log sum_k pi_k N(x; mu_k, exp(logvar_k)); x [...], params [..., K] -> [...] float32."""
  x = x[..., None].astype(jnp.float32)
  comp = -0.5 * (jnp.square(x - means) * jnp.exp(-logvars) + logvars + _LOG_2PI)
  return jax.nn.logsumexp(jax.nn.log_softmax(logits, -1) + comp, -1)


def gmm_draw(key, logits, means, logvars, temperature, shape=()):
  """Draws [*shape, ...] from the 1-D GMMs [..., K] with the standard deviations x temperature
  (t = 0: the mean of the most likely component)."""
  if isinstance(temperature, (int, float)) and temperature == 0.0:
    k = jnp.argmax(logits, -1)
    out = jnp.take_along_axis(means, k[..., None], -1)[..., 0]
    return jnp.broadcast_to(out, tuple(shape) + out.shape)
  k_comp, k_noise = jax.random.split(key)
  lead = tuple(shape) + logits.shape[:-1]
  k = jax.random.categorical(k_comp, logits, axis=-1, shape=lead)
  pick = lambda p: jnp.take_along_axis(jnp.broadcast_to(p, lead + p.shape[-1:]), k[..., None],
                                       -1)[..., 0]
  mu, lv = pick(means), pick(logvars)
  return mu + temperature * jnp.exp(0.5 * lv) * jax.random.normal(k_noise, lead, jnp.float32)


def sir_draw(key, cond, uncond, scale, temperature, num_proposals: int):
  """ARINAR's CFG by sampling-importance-resampling, for one feature.

  cond, uncond: (logits, means, logvars) each [N, K]; scale [N]. M proposals from the conditional
  GMM at `temperature`, log weights (s - 1)(log p_c - log p_u) (untempered densities), one
  resampled per row -> [N]."""
  k_prop, k_pick = jax.random.split(key)
  xs = gmm_draw(k_prop, *cond, temperature, shape=(num_proposals,))               # [M, N]
  log_w = (scale - 1.0) * (gmm_log_prob(xs, *cond) - gmm_log_prob(xs, *uncond))    # [M, N]
  pick = jax.random.categorical(k_pick, log_w, axis=0)                             # [N]
  return jnp.take_along_axis(xs, pick[None], 0)[0]


# -- the inner network --------------------------------------------------------------------------
def _normal(std):
  return nnx.initializers.normal(stddev=std)


def _layernorm(x):
  x = x.astype(jnp.float32)
  mean = x.mean(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(jnp.square(x - mean).mean(-1, keepdims=True) + LN_EPS)


class InnerBlock(nnx.Module):
  """VAR's AdaLNSelfAttn over the feature positions. x [N, T, W], mods 6 x [N, 1, W]."""

  def __init__(self, width: int, cond_dim: int, num_heads: int, depth: int, *, rngs, dtype=None):
    def ada_init(key, shape, dtype_=jnp.float32):   # gammas x 1e-5, scales and shifts x 0.5.
      w = 0.02 * jax.random.normal(key, shape, dtype_)
      return w * jnp.concatenate([jnp.full((2 * width,), 1e-5), jnp.full((4 * width,), 0.5)])

    out_std = 0.02 / math.sqrt(2 * depth)
    self.ada = Dense(cond_dim, 6 * width, axes=("embed", None), rngs=rngs, dtype=dtype,
                     use_bias=True, init=ada_init)
    self.qkv = Dense(width, 3 * width, axes=(None, None), rngs=rngs, dtype=dtype,
                     init=_normal(0.02))
    self.q_bias = nnx.Param(jnp.zeros((width,)), logical_axes=(None,))
    self.v_bias = nnx.Param(jnp.zeros((width,)), logical_axes=(None,))
    self.proj = Dense(width, width, axes=(None, None), rngs=rngs, dtype=dtype, use_bias=True,
                      init=_normal(out_std))
    self.fc1 = Dense(width, 4 * width, axes=(None, None), rngs=rngs, dtype=dtype, use_bias=True,
                     init=_normal(0.02))
    self.fc2 = Dense(4 * width, width, axes=(None, None), rngs=rngs, dtype=dtype, use_bias=True,
                     init=_normal(out_std))
    self.num_heads, self.width = num_heads, width

  def modulation(self, z):
    """z [N, D] -> (gamma1, gamma2, scale1, scale2, shift1, shift2), each [N, 1, W]."""
    out = self.ada(jax.nn.silu(z)).astype(jnp.float32)[:, None]
    return tuple(jnp.split(out, 6, axis=-1))

  def qkv_heads(self, x):
    """x [N, T, W] -> q, k, v [N, T, H, W/H]."""
    n, t, w = x.shape
    qkv = self.qkv(x).astype(jnp.float32)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q, v = q + self.q_bias[...], v + self.v_bias[...]
    shape = (n, t, self.num_heads, w // self.num_heads)
    return q.reshape(shape), k.reshape(shape), v.reshape(shape)

  def attend(self, q, k, v, mask):
    """q [N, T, H, E], k, v [N, S, H, E], mask bool [T, S] -> [N, T, W]."""
    e = q.shape[-1]
    logits = jnp.einsum("nthe,nshe->nhts", q, k) * (0.25 / math.sqrt(e))
    logits = jnp.where(mask, logits, -jnp.inf)
    out = jnp.einsum("nhts,nshe->nthe", jax.nn.softmax(logits, -1), v)
    return self.proj(out.reshape(out.shape[:2] + (self.width,))).astype(jnp.float32)

  def ffn(self, x):
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=True)).astype(jnp.float32)

  def __call__(self, x, mods, kv=None, mask=None):
    """Teacher forced (kv None): causal over T. Cached step: x [N, 1, W], kv = (k, v) caches
    [N, C, H, E] already holding this position, mask [1, C]. -> (x', (k, v) of x)."""
    g1, g2, s1, s2, b1, b2 = mods
    q, k, v = self.qkv_heads(_layernorm(x) * (1 + s1) + b1)
    if kv is None:
      t = x.shape[1]
      mask = jnp.tril(jnp.ones((t, t), bool))
      a = self.attend(q, k, v, mask)
    else:
      a = self.attend(q, *kv(k, v), mask)
    x = x + g1 * a
    x = x + g2 * self.ffn(_layernorm(x) * (1 + s2) + b2)
    return x, (k, v)


class InnerAR(nnx.Module):
  """The per-token feature-by-feature network: z [N, D], features [N, C] -> GMMs [N, C, K]."""

  def __init__(self, channels: int, z_dim: int, fields: ARINARFields, *, rngs, dtype=None):
    w, k = fields.width, fields.num_components
    self.input_proj = Dense(1, w, axes=(None, None), rngs=rngs, dtype=dtype, use_bias=True,
                            init=_normal(0.02))
    self.cond_proj = Dense(z_dim, w, axes=("embed", None), rngs=rngs, dtype=dtype, use_bias=True,
                           init=_normal(0.02))
    self.start_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (w,)),
                                 logical_axes=(None,))
    self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (channels, w)),
                                   logical_axes=(None, None))
    self.blocks = nnx.List([InnerBlock(w, z_dim, fields.num_heads, fields.depth, rngs=rngs,
                                       dtype=dtype) for _ in range(fields.depth)])
    self.head_ada = Dense(z_dim, 2 * w, axes=("embed", None), rngs=rngs, dtype=dtype,
                          use_bias=True, init=_normal(0.02 * 0.5))
    self.out = Dense(w, 3 * k, axes=(None, None), rngs=rngs, dtype=dtype, use_bias=True,
                     init=_normal(0.02 * 0.02))
    self.channels, self.k = channels, k

  def conditioning(self, z):
    """z [N, D] -> (start [N, W], per-block modulations, final (scale, shift) [N, 1, W])."""
    start = self.cond_proj(z).astype(jnp.float32) + self.start_token[...]
    mods = [b.modulation(z) for b in self.blocks]
    scale, shift = jnp.split(self.head_ada(jax.nn.silu(z)).astype(jnp.float32)[:, None], 2, -1)
    return start, mods, (scale, shift)

  def embed_feature(self, x):
    """x [...] -> [..., W]: the input of the next feature position."""
    return self.input_proj(x[..., None].astype(jnp.float32)).astype(jnp.float32)

  def gmm(self, h, final):
    """h [N, T, W] -> (logits, means, logvars) each [N, T, K] float32."""
    scale, shift = final
    out = self.out(_layernorm(h) * (1 + scale) + shift).astype(jnp.float32)
    means, logvars, logits = jnp.split(out, 3, axis=-1)
    return logits, means, logvars

  def teacher_forced(self, z, x):
    """z [N, D], x [N, C] -> (logits, means, logvars) [N, C, K]: feature j's GMM given x_<j."""
    start, mods, final = self.conditioning(z)
    h = jnp.concatenate([start[:, None], self.embed_feature(x[:, :-1])], 1)
    h = h + self.pos_embedding[...]
    for block, m in zip(self.blocks, mods):
      h, _ = block(h, m)
    return self.gmm(h, final)

  def autoregress(self, z, draw, key):
    """z [N, D]; draw(key, (logits, means, logvars) [N, K] each) -> the features [N] to feed
    on. C inner steps with a key/value cache -> features [N, C]."""
    n, c = z.shape[0], self.channels
    start, mods, final = self.conditioning(z)
    heads = self.blocks[0].num_heads if len(self.blocks) else 1
    e = start.shape[-1] // heads
    caches = [(jnp.zeros((n, c, heads, e), jnp.float32),) * 2 for _ in self.blocks]
    pos = self.pos_embedding[...]

    def step(carry, j):
      inp, caches, key = carry
      key, sub = jax.random.split(key)
      h = (inp + pos[j])[:, None]
      mask = (jnp.arange(c) <= j)[None]
      new_caches = []
      for block, m, (kc, vc) in zip(self.blocks, mods, caches):
        stash = {}

        def with_cache(k, v, kc=kc, vc=vc, stash=stash):
          kc = jax.lax.dynamic_update_slice_in_dim(kc, k, j, 1)
          vc = jax.lax.dynamic_update_slice_in_dim(vc, v, j, 1)
          stash["kv"] = (kc, vc)
          return kc, vc

        h, _ = block(h, m, kv=with_cache, mask=mask)
        new_caches.append(stash["kv"])
      params = tuple(p[:, 0] for p in self.gmm(h, final))
      x = draw(sub, params)
      return (self.embed_feature(x), new_caches, key), x

    _, xs = jax.lax.scan(step, (start, caches, key), jnp.arange(c))
    return xs.T


# -- distributions ------------------------------------------------------------------------------
class ARINAR(Distribution):
  """z [B, L, D]: the backbone output of each position; `net` the head's InnerAR (static: called
  inside the trace that built this distribution). Tokens float32 [B, L, C]."""
  z: jax.Array
  net: Any = struct.field(pytree_node=False, default=None)
  channels: int = struct.field(pytree_node=False, default=0)
  proposals: int = struct.field(pytree_node=False, default=1000)

  head_name = "arinar"

  def _flat_z(self):
    return self.z.reshape((-1, self.z.shape[-1]))

  def feature_params(self, x):
    """x [B, L, C] -> (logits, means, logvars) [B, L, C, K]: each feature's GMM given x_<j."""
    check_targets(x, (self.channels,), jnp.float32, self.z.shape[:2], self.head_name)
    b, l = self.z.shape[:2]
    out = self.net.teacher_forced(self._flat_z(), x.reshape(b * l, -1).astype(jnp.float32))
    return tuple(p.reshape(b, l, self.channels, -1) for p in out)

  def feature_log_probs(self, x, temperature: float = 1.0):
    """[B, L, C]: log p(x_j | x_<j, z), the standard deviations x temperature."""
    logits, means, logvars = self.feature_params(x)
    logvars = logvars + 2.0 * jnp.log(jnp.maximum(jnp.asarray(temperature, jnp.float32), 1e-6))
    return gmm_log_prob(x.astype(jnp.float32), logits, means, logvars)

  def log_prob(self, x):
    return self.feature_log_probs(x).sum(-1)

  def loss(self, targets, key=None, weights=None):
    """(weighted mean NLL, NLL [B, L]) in nats per token (teacher forced; draws no noise)."""
    del key
    nll = -self.log_prob(targets)
    return weighted_mean(nll, weights), nll

  def confidence(self, x, *, temperature: float = 1.0):
    return self.feature_log_probs(x, temperature).sum(-1)

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.head_name, temperature)
    b, l = self.z.shape[:2]
    draw = lambda k, params: gmm_draw(k, *params, temperature)
    return self.net.autoregress(self._flat_z(), draw, key).reshape(b, l, self.channels)

  def guide(self, uncond: "ARINAR", scale) -> "GuidedARINAR":
    s = broadcast_scale(scale, self.z[..., 0])
    return GuidedARINAR(cond=self, uncond_z=uncond.z,
                        scale=jnp.broadcast_to(s, self.z.shape[:2]).astype(jnp.float32))


class GuidedARINAR(Distribution):
  """ARINAR's SIR guidance (module docstring); scale [B, L]."""
  cond: ARINAR
  uncond_z: jax.Array
  scale: jax.Array

  head_name = "arinar (guided)"

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.cond.head_name, temperature)
    c = self.cond
    b, l = c.z.shape[:2]
    n = b * l
    z = jnp.concatenate([c._flat_z(), self.uncond_z.reshape(n, -1)])       # [2N, D]
    scale = self.scale.reshape(n)
    if isinstance(temperature, (int, float)) and temperature == 0.0:
      def draw(k, params):                     # greedy: the conditional half decides.
        x = gmm_draw(k, *(p[:n] for p in params), 0.0)
        return jnp.concatenate([x, x])
    else:
      def draw(k, params):
        cond = tuple(p[:n] for p in params)
        uncond = tuple(p[n:] for p in params)
        x = sir_draw(k, cond, uncond, scale, temperature, c.proposals)
        return jnp.concatenate([x, x])          # both halves continue from the same features.
    return c.net.autoregress(z, draw, key)[:n].reshape(b, l, c.channels)

  def loss(self, targets, key=None, weights=None):
    raise ValueError("a guided ARINAR head is for sampling; train the conditional one")

  def log_prob(self, x):
    raise ValueError("head 'arinar (guided)' has no tractable log-probability (SIR guidance)")

  def guide(self, uncond, scale):
    raise ValueError("a guided ARINAR head is already guided")


@HEADS.register("arinar", fields=ARINARFields)
class ARINARHead(nnx.Module):
  """h [B, L, D] -> ARINAR over continuous tokens [B, L, C] (C = tokenizer.token_dim)."""

  token_dtype = jnp.float32
  sample_options = ()   # the temperature only.

  def __init__(self, dim: int, tokenizer, fields: ARINARFields = ARINARFields(), *,
               rngs: nnx.Rngs, dtype=None):
    c = continuous_token_dim(tokenizer, head="arinar")
    self.token_shape = (c,)
    self.fields = fields
    self.net = InnerAR(c, dim, fields, rngs=rngs, dtype=dtype)

  def __call__(self, h, cond=None) -> ARINAR:
    del cond
    return ARINAR(h, net=self.net, channels=self.token_shape[0],
                  proposals=self.fields.cfg_proposals)
