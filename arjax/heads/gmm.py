"""GMM head of GIVT (Tschannen et al. 2023): a k-component diagonal Gaussian mixture per token.

h [B, L, D] -> Dense -> mixture logits [B, L, K], means [B, L, K, C] and scales [B, L, K, C]
(square-plus (x + sqrt(x^2 + 4)) / 2 of the raw output, floored at 1e-6, as GIVT's get_pdf).
Loss: the NLL -log sum_k pi_k prod_c N(x_c; mu_kc, sigma_kc) in nats per token.

Sampling (`GMM.sample`): a component k ~ Categorical(logits), then x = mu_k + t sigma_k eps: the
temperature t scales the standard deviations only (GIVT samples at t = 0.95); t = 0 returns the
mean of the most likely component.

Guidance (`GMM.guide` -> `GuidedGMM`), GIVT's density-based CFG (big_vision
givt/parallel_decode.py, CFGDensity) with w = s - 1 (arjax's scale s = 1 is no guidance, as for
logits): a component k is drawn from the conditional mixture and paired with the same component
of the unconditional one; per channel, x is rejection-sampled from the density proportional to
N_c(x)^(1+w) / N_u(x)^w with the proposal N(mu_c, 2 max(sigma_c, sigma_u)), `cfg_proposals`
proposals per channel, keeping the first accepted one. GIVT bounds the ratio target/proposal
numerically on a grid of 1001 points; here the log ratio is a quadratic in x, so the bound is its
exact maximum and every accepted draw is an exact sample of the guided channel density. When the
ratio is unbounded (the quadratic opens upwards: the guided density does not normalise) or no
proposal is accepted, the channel falls back to the conditional component's draw, as GIVT does;
`GuidedGMM.acceptance` reports how often a channel was accepted.

Legend: B batch, L positions, D width, K components, C channels per token, M proposals.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from arjax.heads.base import (HEADS, Distribution, broadcast_scale, check_targets,
                              continuous_token_dim, weighted_mean)
from arjax.nn.layers import Dense

MIN_SCALE = 1e-6
_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GMMFields:
  num_components: int = 16     # K mixture components per token (GIVT: 16).
  cfg_proposals: int = 1000    # M rejection-sampling proposals per channel under CFG (GIVT 1000).

  def __post_init__(self):
    if self.num_components < 1:
      raise ValueError(f"model.head.num_components={self.num_components}; expected >= 1")
    if self.cfg_proposals < 1:
      raise ValueError(f"model.head.cfg_proposals={self.cfg_proposals}; expected >= 1")


def squareplus(x):
  """(x + sqrt(x^2 + 4)) / 2: a smooth positive map (GIVT's scale nonlinearity)."""
  return (x + jnp.sqrt(jnp.square(x) + 4.0)) / 2.0


def normal_logpdf(x, mean, scale):
  return -0.5 * jnp.square((x - mean) / scale) - jnp.log(scale) - 0.5 * _LOG_2PI


def pick(x, k):
  """x [B, L, K, C], component k int [B, L] -> [B, L, C]."""
  return jnp.take_along_axis(x, k[..., None, None], axis=2)[:, :, 0]


class GMM(Distribution):
  """logits [B, L, K], means and scales [B, L, K, C]; tokens float32 [B, L, C]."""
  logits: jax.Array
  means: jax.Array
  scales: jax.Array
  proposals: int = struct.field(pytree_node=False, default=1000)  # CFG rejection proposals.

  head_name = "gmm"

  def check(self, x):
    check_targets(x, self.means.shape[-1:], jnp.float32, self.logits.shape[:2], self.head_name)

  def component_log_prob(self, x):
    """[B, L, K]: log N(x; mu_k, diag sigma_k^2) of every component."""
    return normal_logpdf(x[:, :, None].astype(jnp.float32), self.means, self.scales).sum(-1)

  def log_prob(self, x):
    self.check(x)
    return jax.nn.logsumexp(jax.nn.log_softmax(self.logits, -1) + self.component_log_prob(x), -1)

  def loss(self, targets, key=None, weights=None):
    """(weighted mean NLL, NLL [B, L]) in nats per token."""
    del key  # the NLL draws no noise.
    nll = -self.log_prob(targets)
    return weighted_mean(nll, weights), nll

  def confidence(self, x, *, temperature: float = 1.0):
    return self.with_temperature(temperature).log_prob(x)

  def with_temperature(self, temperature: float) -> "GMM":
    return self.replace(scales=self.scales * max(temperature, MIN_SCALE))

  def select(self, key, temperature: float):
    """(component k [B, L], its mean [B, L, C], its temperature-scaled scale [B, L, C])."""
    k = (jnp.argmax(self.logits, -1) if temperature == 0.0
         else jax.random.categorical(key, self.logits, axis=-1))
    return k, pick(self.means, k), pick(self.scales, k) * temperature

  def sample(self, key, *, temperature: float = 1.0):
    k_comp, k_noise = jax.random.split(key)
    _, mean, scale = self.select(k_comp, temperature)
    return mean + scale * jax.random.normal(k_noise, mean.shape, mean.dtype)

  def guide(self, uncond: "GMM", scale) -> "GuidedGMM":
    w = broadcast_scale(scale, self.logits[..., 0]) - 1.0
    return GuidedGMM(cond=self, uncond=uncond,
                     weight=jnp.broadcast_to(w, self.logits.shape[:2]).astype(jnp.float32),
                     proposals=self.proposals)


@HEADS.register("gmm", fields=GMMFields)
class GMMHead(nnx.Module):
  """h [B, L, D] -> GMM over continuous tokens [B, L, C] (C = tokenizer.token_dim)."""

  token_dtype = jnp.float32
  sample_options = ()   # GMM.sample takes the temperature only.

  def __init__(self, dim: int, tokenizer, fields: GMMFields = GMMFields(), *, rngs: nnx.Rngs,
               dtype=None):
    c = continuous_token_dim(tokenizer, head="gmm")
    self.token_shape = (c,)
    self.k, self.c = fields.num_components, c
    self.cfg_proposals = fields.cfg_proposals
    self.proj = Dense(dim, self.k * (1 + 2 * c), axes=("embed", None), rngs=rngs, dtype=dtype,
                      init=nnx.initializers.normal(stddev=0.02))

  def __call__(self, h, cond=None) -> GMM:
    del cond
    out = self.proj(h).astype(jnp.float32)
    b, l = out.shape[:2]
    logits = out[..., :self.k]
    means, raw = jnp.split(out[..., self.k:].reshape(b, l, self.k, 2 * self.c), 2, axis=-1)
    scales = jnp.maximum(squareplus(raw), MIN_SCALE)
    return GMM(logits, means, scales, proposals=self.cfg_proposals)


class GuidedGMM(Distribution):
  """GIVT's density-based CFG of two GMMs (see the module docstring); weight w [B, L]."""
  cond: GMM
  uncond: GMM
  weight: jax.Array
  proposals: int = struct.field(pytree_node=False, default=1000)

  head_name = "gmm (guided)"

  def guided_log_density(self, x, k, temperature: float = 1.0):
    """Unnormalised log N_c^(1+w) / N_u^w per channel [B, L, C] at x [..., B, L, C] for the
    paired component k [B, L]."""
    w = self.weight[..., None]
    mc, sc = pick(self.cond.means, k), pick(self.cond.scales, k) * temperature
    mu, su = pick(self.uncond.means, k), pick(self.uncond.scales, k) * temperature
    return (1.0 + w) * normal_logpdf(x, mc, sc) - w * normal_logpdf(x, mu, su)

  def sample_with_acceptance(self, key, *, temperature: float = 1.0):
    """(tokens [B, L, C], accepted bool [B, L, C]: the channel is an exact guided draw)."""
    k_comp, k_prop, k_unif, k_fall = jax.random.split(key, 4)
    t = max(temperature, MIN_SCALE)
    k, mc, sc = self.cond.select(k_comp, t)
    su = pick(self.uncond.scales, k) * t
    mu = pick(self.uncond.means, k)
    w = self.weight[..., None]
    q = 2.0 * jnp.maximum(sc, su)                      # the proposal's scale.
    # log target - log proposal = a x^2 + b x + const: bounded iff a < 0, maximal at -b / 2a.
    a = -(1.0 + w) / (2 * sc ** 2) + w / (2 * su ** 2) + 1.0 / (2 * q ** 2)
    b = (1.0 + w) * mc / sc ** 2 - w * mu / su ** 2 - mc / q ** 2
    bounded = a < 0
    x_star = jnp.where(bounded, -b / (2 * jnp.where(bounded, a, -1.0)), mc)
    log_ratio = lambda x: (self.guided_log_density(x, k, t) - normal_logpdf(x, mc, q))
    log_bound = log_ratio(x_star)
    xs = mc + q * jax.random.normal(k_prop, (self.proposals,) + mc.shape)        # [M, B, L, C]
    log_u = jnp.log(jax.random.uniform(k_unif, xs.shape, minval=1e-38))
    ok = (log_u < log_ratio(xs) - log_bound) & bounded
    first = jnp.argmax(ok, axis=0)                                              # [B, L, C]
    chosen = jnp.take_along_axis(xs, first[None], axis=0)[0]
    accepted = ok.any(0)
    fallback = mc + sc * jax.random.normal(k_fall, mc.shape)
    return jnp.where(accepted, chosen, fallback), accepted

  def sample(self, key, *, temperature: float = 1.0):
    if temperature == 0.0:  # greedy: the conditional mean of the most likely component.
      return self.cond.sample(key, temperature=0.0)
    return self.sample_with_acceptance(key, temperature=temperature)[0]

  def confidence(self, x, *, temperature: float = 1.0):
    """Unnormalised guided log density of the conditional argmax component's pairing (GIVT
    orders masked decoding by it; it is not a normalised log-probability)."""
    k = jnp.argmax(self.cond.logits, -1)
    return self.guided_log_density(x, k, max(temperature, MIN_SCALE)).sum(-1)

  def loss(self, targets, key=None, weights=None):
    raise ValueError("a guided GMM is for sampling; train the conditional GMM")

  def guide(self, uncond, scale):
    raise ValueError("a guided GMM is already guided")
