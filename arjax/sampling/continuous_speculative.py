"""'continuous_sjd': speculative Jacobi decoding of continuous tokens on the GMM head's density.

The loop is the SJD sampler's (arjax.sampling.speculative: a window of W drafts per pass,
per-row acceptance, rollback by cache length, per-row keys); only the laws differ. Every cell's
law is a diagonal Gaussian mixture (the `gmm` head, GIVT) at the sampling temperature, whose
density is exact. Continuous speculative decoding (Wang et al. 2024, "Continuous Speculative
Decoding for Autoregressive Image Generation"; methods-2.md) with self-speculation:

  accept draft x_k (drawn from q_k) if u < min(1, p_k(x_k) / q_k(x_k))   (densities);
  at the first rejection draw x_k from the residual r_k = max(0, p_k - q_k) / Z_k and stop.

The residual is drawn by acceptance-rejection with p_k as the proposal, as the paper does:
propose y ~ p_k, keep it with probability max(0, 1 - q_k(y) / p_k(y)) (= r_k(y) Z_k / p_k(y)
<= 1, so a kept y is an exact draw from r_k), at most `max_tries` proposals (the paper: 100).
At the bound, the first proposal (a draw from p_k, not r_k) is committed and counted as a
fallback (`sample_with_stats`: stats['fallbacks'] per row). A fallback is the only departure
from the exact law: a cell is rejected with probability Z_k (= TV(p_k, q_k)) and its residual
then falls back with probability (1 - Z_k)^T (T = max_tries), so the conditional law of a
committed token is off by at most Z_k (1 - Z_k)^T <= 1 / (e T) in total variation (0.0037 at
100 tries; the joint law by at most the sum over tokens), and by 0 where no fallback happened. Where p_k = q_k the test accepts with probability 1 and the residual is never drawn.

Initial drafts are standard normal, q = N(0, I) (written as a K-component mixture with equal
components, so every cell's law has one pytree structure); new drafts after a rejection are
fresh draws from this pass's p (as 'sjd'). Every committed token is then an exact draw from
p(. | committed prefix), up to the counted fallbacks (tests/sampling/
test_continuous_speculative.py checks the joint law through the conditional CDFs).

Refused, by name: heads without a tractable density ('diffusion', 'flow': their draws come from
an inner denoising / ODE loop; the paper's denoising-trajectory acceptance for diffusion heads is
not implemented), classifier-free guidance (GIVT's guided GMM draws by rejection with a fallback
and has no tractable normalised density), temperature 0 (the greedy draw has no density), and
bidirectional or non-raster orders (as 'sjd').

Options: `window` (1 .. N - 1; 0: min(16, N - 1)) and `max_tries` (>= 1) of config.sampling /
SamplingConfig (`python -m arjax.sample --sampler continuous_sjd --window 8 --max_tries 100`).

Legend: B batch, N tokens per image, W window, K mixture components, C channels per token,
T max_tries.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.heads.gmm import GMM, GMMHead, normal_logpdf
from arjax.sampling.base import SAMPLERS
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.speculative import SpeculativeOptions, SpeculativeSampler

__all__ = ["ContinuousSJDSampler", "gmm_log_density", "residual_draw"]


def gmm_log_density(law: GMM, x):
  """law: GMM with leaves logits [..., K], means / scales [..., K, C]; x [..., C] -> log p(x)
  [...] (exact mixture density)."""
  comp = normal_logpdf(x[..., None, :], law.means, law.scales).sum(-1)
  return jax.nn.logsumexp(jax.nn.log_softmax(law.logits, -1) + comp, -1)


def gmm_draw(key, law: GMM):
  """One draw [..., C] from a GMM with leaves [..., K] / [..., K, C] (scales already at the
  sampling temperature)."""
  kc, kn = jax.random.split(key)
  k = jax.random.categorical(kc, law.logits, axis=-1)
  pick = lambda a: jnp.take_along_axis(a, k[..., None, None], axis=-2)[..., 0, :]
  mean, scale = pick(law.means), pick(law.scales)
  return mean + scale * jax.random.normal(kn, mean.shape, mean.dtype)


def residual_draw(key, p: GMM, q: GMM, max_tries: int):
  """Draws from norm(max(0, p - q)) by acceptance-rejection with proposal p, per cell.
  p, q: GMMs with leaves [W, K] / [W, K, C]. Returns (x [W, C], exact bool [W]): exact is False
  where all `max_tries` proposals were refused and x is the first proposal (a draw from p)."""
  kp, ku = jax.random.split(key)
  ys = jax.vmap(lambda k: gmm_draw(k, p))(jax.random.split(kp, max_tries))     # [T, W, C]
  log_ratio = jax.vmap(lambda y: gmm_log_density(q, y) - gmm_log_density(p, y))(ys)  # [T, W]
  u = jax.random.uniform(ku, log_ratio.shape)
  # Keep y with probability max(0, 1 - q(y) / p(y)): u < 1 - exp(log q - log p).
  ok = u < -jnp.expm1(jnp.minimum(log_ratio, 0.0))
  first = jnp.argmax(ok, axis=0)                                                # [W]
  exact = ok.any(0)
  chosen = jnp.take_along_axis(ys, first[None, :, None], axis=0)[0]
  return jnp.where(exact[:, None], chosen, ys[0]), exact


@SAMPLERS.register("continuous_sjd")
class ContinuousSJDSampler(SpeculativeSampler):
  """Speculative Jacobi decoding of continuous (GMM-head) tokens by density ratios (lossless up
  to the counted residual fallbacks; module docstring)."""

  name = "continuous_sjd"
  speculative_options = ("window", "max_tries")

  def __init__(self, fm: FunctionalModel, sampling: SamplingConfig,
               guidance: Optional[GuidanceSchedule] = None,
               options: Optional[SpeculativeOptions] = None):
    sampling.validate()
    if sampling.temperature <= 0.0:
      raise ValueError(f"temperature={sampling.temperature}; sampler {self.name!r} needs "
                       f"temperature > 0 (it tests drafts by density ratios; the greedy draw "
                       f"has no density)")
    super().__init__(fm, sampling, guidance, options)
    if self.use_cfg:
      raise ValueError(f"cfg_scale={self.guidance.scale}; sampler {self.name!r} tests drafts "
                       f"by the head's density and the guided GMM (GIVT's density CFG) has no "
                       f"tractable one: use cfg_scale=1, or sampler 'sequential'")
    head = fm.bind(fm.abstract_params).head
    self.components, self.channels = int(head.k), int(head.c)
    self.proposals = int(head.cfg_proposals)

  @classmethod
  def head_problem(cls, model) -> Optional[str]:
    head = getattr(model, "head", None)
    if isinstance(head, GMMHead):
      return None
    name = getattr(model, "head_name", None) or type(head).__name__
    if head is not None and jnp.issubdtype(head.token_dtype, jnp.integer):
      return (f"head {name!r} draws discrete tokens; {cls.name!r} is for the continuous 'gmm' "
              f"head (discrete tokens: 'sjd', 'mc_sjd', 'gsd')")
    return (f"head {name!r} has no tractable density (its draws come from an inner denoising / "
            f"ODE loop); {cls.name!r} tests drafts by density ratios p(x) / q(x) and needs "
            f"head 'gmm'")

  # -- the laws: GMMs at the sampling temperature ----------------------------------------------
  def target_law(self, dist, cells):
    del cells
    return dist.with_temperature(self.sampling.temperature)

  def initial_law(self):
    k, c = self.components, self.channels
    return GMM(jnp.zeros((k,), jnp.float32), jnp.zeros((k, c), jnp.float32),
               jnp.ones((k, c), jnp.float32), proposals=self.proposals)

  def initial_drafts(self, key):
    return jax.random.normal(key, (self.num_tokens, self.channels), jnp.float32)

  def draw_one(self, key, law):
    return gmm_draw(key, law)

  def log_accept_ratio(self, p, q, x):
    """log p(x) - log q(x) [W] of the drafts x [W, C]: accept where log u is below it."""
    return gmm_log_density(p, x) - gmm_log_density(q, x)

  def verify_row(self, key, p, q, x, valid):
    """p, q: GMMs over the window's cells (leaves [W, K], [W, K, C]); x [W, C] the drafts;
    valid [W]. As SpeculativeSampler.verify_row; counts[1] = 1 where the committed residual draw
    fell back (hit max_tries)."""
    w = x.shape[0]
    ku, kr, kf = jax.random.split(key, 3)
    log_u = jnp.log(jax.random.uniform(ku, (w,)))
    accept = log_u < self.log_accept_ratio(p, q, x)
    reject = valid & ~accept
    first = jnp.where(reject.any(), jnp.argmax(reject), w)
    j = jnp.arange(w)
    commit = valid & (j <= first)
    after = valid & (j > first)
    # Only the first rejected cell's residual is committed (the cells after it get fresh
    # drafts), so it alone is drawn: max_tries proposals, not W * max_tries.
    at = jnp.minimum(first, w - 1)
    one = lambda law: jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, at, 1), law)
    draw, exact = residual_draw(kr, one(p), one(q), self.spec.max_tries)     # [1, C], [1]
    new = gmm_draw(kf, p)   # fresh drafts from this pass's p (as 'sjd').
    tokens = jnp.where(commit[:, None], x, jnp.where(after[:, None], new, x))
    tokens = jnp.where((j == first)[:, None], draw, tokens)
    fell = (first < w) & ~exact[0]
    counts = jnp.stack([(first < w).astype(jnp.int32), fell.astype(jnp.int32)])
    return tokens, commit, after, counts
