"""'continuous_sjd': speculative Jacobi decoding of continuous tokens on the GMM head's density
or the diffusion head's trajectory density.

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

The diffusion head (MAR's DDPM, arjax.heads.diffusion): a draft is a whole reverse trajectory
y_S, ..., y_1, y_0 [S + 1, C] (the model is fed y_0, `token_of`), drawn from the chain of the
draft's condition q (the head's embedded condition of the pass that drafted it; the initial
drafts use condition 0). Its law has a density: N(y_S; 0, I) times the reverse steps'
Gaussians N(y_i; mean_i(y_{i+1}), var_i temperature^2) for i = S - 1 ... 1, times a point mass at
y_0 = mean_0(y_1) (the last step adds no noise). The test is min(1, p(tau) / q(tau)) on the
JOINT density of the whole trajectory, and the residual max(0, p - q) is drawn over whole
trajectories (proposal: a fresh target trajectory). This is exact for the trajectory's law
and hence for the token's marginal (y_0's law under the target chain is the head's law, that
of Diffusion.sample); testing only the last step's Gaussians given a shared prefix trajectory
drawn from the draft's chain (the paper's trajectory alignment) would be exact only for the
conditional law given that prefix, whose law is the draft's, not the target's.
What this means here: the point mass makes p / q = 0 unless the target's and the draft's
last means fall on the same float, which (for tokens of order 1) needs the draft's context to
be the committed one; a rejected draft's residual is then almost surely a fresh target
trajectory. So on a trained head the exact test accepts only drafts whose context has not
changed since they were drafted, and the speed-up is small; the pass counts on a random head
(docs/benchmarks.md) mean nothing. The paper's lossy last-step acceptance is not implemented.

Refused, by name: heads without a tractable density ('flow': its draws come from an ODE loop),
classifier-free guidance (GIVT's guided GMM draws by rejection with a fallback and has no
tractable normalised density; the diffusion head's guided step laws are tractable but not
wired in), temperature 0 (the greedy draw has no density), and bidirectional or non-raster
orders (as 'sjd').

Options: `window` (1 .. N - 1; 0: min(16, N - 1)) and `max_tries` (>= 1) of config.sampling /
SamplingConfig (`python -m arjax.sample --sampler continuous_sjd --window 8 --max_tries 100`).

Legend: B batch, N tokens per image, W window, K mixture components, C channels per token,
T max_tries, S the diffusion head's sampling steps, Wd its MLP width.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from arjax.core.functional import FunctionalModel
from arjax.heads.diffusion import DiffusionHead, p_mean_logvar, sampling_schedule
from arjax.heads.gmm import GMM, GMMHead, normal_logpdf
from arjax.sampling.base import SAMPLERS
from arjax.sampling.config import SamplingConfig
from arjax.sampling.guidance_schedule import GuidanceSchedule
from arjax.sampling.speculative import SpeculativeOptions, SpeculativeSampler

__all__ = ["ContinuousSJDSampler", "gmm_log_density", "residual_draw", "trajectory_draw",
           "trajectory_log_ratio"]


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


def rejection_residual(key, draw_p, log_q_over_p, max_tries: int):
  """Draws from norm(max(0, p - q)) by acceptance-rejection with proposal p: draw_p(key) -> y
  [1, *D] from p; log_q_over_p(y) -> [1]. Keeps y with probability max(0, 1 - q(y) / p(y)).
  Returns (x [1, *D], exact bool [1]): exact is False where all `max_tries` proposals were
  refused and x is the first proposal (a draw from p)."""
  kp, ku = jax.random.split(key)
  ys = jax.vmap(draw_p)(jax.random.split(kp, max_tries))                      # [T, 1, *D]
  log_ratio = jax.vmap(log_q_over_p)(ys)                                       # [T, 1]
  u = jax.random.uniform(ku, log_ratio.shape)
  # Keep y with probability max(0, 1 - q(y) / p(y)): u < 1 - exp(log q - log p).
  ok = u < -jnp.expm1(jnp.minimum(log_ratio, 0.0))
  first = jnp.argmax(ok, axis=0)                                                # [1]
  exact = ok.any(0)
  chosen = jnp.take_along_axis(ys, first.reshape((1, -1) + (1,) * (ys.ndim - 2)), axis=0)[0]
  return jnp.where(_over(exact, chosen), chosen, ys[0]), exact


def residual_draw(key, p: GMM, q: GMM, max_tries: int):
  """rejection_residual for GMMs p, q with leaves [1, K] / [1, K, C] -> (x [1, C], exact [1])."""
  return rejection_residual(key, lambda k: gmm_draw(k, p),
                            lambda y: gmm_log_density(q, y) - gmm_log_density(p, y), max_tries)


def _over(mask, a):
  return mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim))


# -- the diffusion head: laws of whole denoising trajectories ---------------------------------------
def trajectory_draw(net, sched, c, key, temperature, channels: int):
  """One DDPM trajectory per condition c [..., Wd] -> [..., S + 1, C]: index 0 the start state
  y_S ~ N(0, I), index S - i the state after reverse step i (S - 1 ... 0), index S the token
  y_0 = mean_0(y_1) (no noise at the last step). The same law as heads.diffusion.ddpm_sample
  (noise std exp(logvar / 2) * temperature; the start noise unscaled)."""
  steps = len(sched.betas)
  tmap = jnp.asarray(sched.timestep_map, jnp.float32)
  k0, kloop = jax.random.split(key)
  shape = c.shape[:-1] + (channels,)
  x = jax.random.normal(k0, shape, jnp.float32)
  states = [x]
  for j in range(steps):   # S is small (the head's num_sampling_steps): unrolled.
    i = steps - 1 - j
    mean, logvar, _ = p_mean_logvar(sched, net(x, tmap[i], c), x,
                                    jnp.full(shape[:-1], i, jnp.int32))
    noise = jax.random.normal(jax.random.fold_in(kloop, j), shape, jnp.float32)
    x = mean + (i > 0) * jnp.exp(0.5 * logvar) * noise * temperature
    states.append(x)
  return jnp.stack(states, axis=-2)


def trajectory_log_ratio(net, sched, cp, cq, traj, temperature):
  """(log p(traj) - log q(traj) over the stochastic steps [...], same bool [...]) of
  trajectories traj [..., S + 1, C] under the DDPM chains of conditions cp, cq [..., Wd].

  The start state's N(0, I) cancels; the reverse steps S - 1 ... 1 are Gaussians. The last step
  adds no noise: y_0 = mean_0(y_1) is a point mass whose place depends on the condition, so
  the joint densities' ratio is the stochastic steps' ratio where both chains put y_0 at the
  same place (`same`: the two last means, computed in one call, equal bit for bit) and 0 or
  infinite where they do not (0 for a draft drawn from q, infinite for one drawn from p)."""
  steps = len(sched.betas)
  i = steps - 1 - jnp.arange(steps)                                            # [S]
  t = jnp.asarray(sched.timestep_map, jnp.float32)[i]
  x_in, x_out = traj[..., :-1, :], traj[..., 1:, :]                            # [..., S, C]
  both = jnp.stack(jnp.broadcast_arrays(cp, cq))[..., None, :]                 # [2, ..., 1, Wd]
  mean, logvar, _ = p_mean_logvar(sched, net(x_in, t, both), x_in,
                                  jnp.broadcast_to(i, x_in.shape[:-1]))
  scale = jnp.exp(0.5 * logvar) * temperature
  noisy = (i > 0)[:, None]
  logpdf = jnp.where(noisy, normal_logpdf(x_out, mean, scale), 0.0).sum((-2, -1))   # [2, ...]
  same = (mean[0, ..., -1, :] == mean[1, ..., -1, :]).all(-1)
  return logpdf[0] - logpdf[1], same


@SAMPLERS.register("continuous_sjd")
class ContinuousSJDSampler(SpeculativeSampler):
  """Speculative Jacobi decoding of continuous tokens by density ratios: of the GMM head's
  mixtures, or of the diffusion head's whole denoising trajectories (lossless up to the counted
  residual fallbacks; module docstring)."""

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
    head = fm.bind(fm.abstract_params).head
    self.diffusion = isinstance(head, DiffusionHead)
    if self.use_cfg:
      why = ("the diffusion head's guided step laws are not wired into the draft / target laws"
             if self.diffusion else "the guided GMM (GIVT's density CFG) has no tractable one")
      raise ValueError(f"cfg_scale={self.guidance.scale}; sampler {self.name!r} tests drafts "
                       f"by the head's density and {why}: use cfg_scale=1, or sampler "
                       f"'sequential'")
    if self.diffusion:
      f = head.fields
      # main's head gained clip_denoised (clamped x0 per step); the trajectory laws here are
      # the unclamped chain's, so a clamping head is refused rather than sampled off its law.
      if getattr(f, "clip_denoised", 0.0):
        raise ValueError(f"model.head.clip_denoised={f.clip_denoised}; sampler {self.name!r} "
                         f"scores the unclamped DDPM chain: use clip_denoised=0, or sampler "
                         f"'sequential'")
      self.sched = sampling_schedule(f.train_timesteps, f.num_sampling_steps)
      self.steps, self.channels = f.num_sampling_steps, int(head.token_shape[0])
      self.cond_width = int(f.width)
      self._net = None   # the bound denoising network, set by target_law inside the trace.
    else:
      self.components, self.channels = int(head.k), int(head.c)
      self.proposals = int(head.cfg_proposals)

  @classmethod
  def head_problem(cls, model) -> Optional[str]:
    head = getattr(model, "head", None)
    if isinstance(head, (GMMHead, DiffusionHead)):
      return None
    name = getattr(model, "head_name", None) or type(head).__name__
    if head is not None and jnp.issubdtype(head.token_dtype, jnp.integer):
      return (f"head {name!r} draws discrete tokens; {cls.name!r} is for the continuous 'gmm' "
              f"and 'diffusion' heads (discrete tokens: 'sjd', 'mc_sjd', 'gsd')")
    return (f"head {name!r} has no tractable density (its draws come from an ODE loop); "
            f"{cls.name!r} tests drafts by density ratios p(x) / q(x) and needs head 'gmm' or "
            f"'diffusion'")

  # -- the laws: GMMs at the sampling temperature, or diffusion conditions --------------------
  def target_law(self, dist, cells):
    del cells
    if self.diffusion:
      self._net = dist.net   # static: the network bound to this trace's params.
      return {"c": dist.c}
    return dist.with_temperature(self.sampling.temperature)

  def initial_law(self):
    if self.diffusion:   # the head's chain at condition 0 (any fixed law with a density works).
      return {"c": jnp.zeros((self.cond_width,), jnp.float32)}
    k, c = self.components, self.channels
    return GMM(jnp.zeros((k,), jnp.float32), jnp.zeros((k, c), jnp.float32),
               jnp.ones((k, c), jnp.float32), proposals=self.proposals)

  def initial_drafts(self, key):
    if self.diffusion:
      c = jnp.broadcast_to(self.initial_law()["c"], (self.num_tokens, self.cond_width))
      return self.draw_one(key, {"c": c})
    return jax.random.normal(key, (self.num_tokens, self.channels), jnp.float32)

  def token_of(self, drafts):
    """Diffusion drafts are trajectories [..., S + 1, C]; the model sees their last state."""
    return drafts[..., -1, :] if self.diffusion else drafts

  def draw_one(self, key, law):
    if self.diffusion:
      return trajectory_draw(self._net, self.sched, law["c"], key, self.sampling.temperature,
                             self.channels)
    return gmm_draw(key, law)

  def log_accept_ratio(self, p, q, x):
    """log p(x) - log q(x) [W] of the drafts x [W, C] (diffusion: trajectories [W, S + 1, C]):
    accept where log u is below it."""
    if self.diffusion:   # x drawn from q: p / q = 0 where the last steps' point masses differ.
      diff, same = trajectory_log_ratio(self._net, self.sched, p["c"], q["c"], x,
                                        self.sampling.temperature)
      return jnp.where(same, diff, -jnp.inf)
    return gmm_log_density(p, x) - gmm_log_density(q, x)

  def residual(self, key, p, q):
    """A draw [1, *D] from norm(max(0, p - q)) of one cell (leaves [1, ...]) and exact [1]."""
    if not self.diffusion:
      return residual_draw(key, p, q, self.spec.max_tries)

    def log_q_over_p(y):   # y drawn from p: q / p = 0 where the last steps' point masses differ.
      diff, same = trajectory_log_ratio(self._net, self.sched, p["c"], q["c"], y,
                                        self.sampling.temperature)
      return jnp.where(same, -diff, -jnp.inf)

    return rejection_residual(key, lambda k: self.draw_one(k, p), log_q_over_p,
                              self.spec.max_tries)

  def verify_row(self, key, p, q, x, valid):
    """p, q: laws over the window's cells (GMM leaves [W, K], [W, K, C]; diffusion {"c":
    [W, Wd]}); x [W, *D] the drafts; valid [W]. As SpeculativeSampler.verify_row; counts[1] = 1
    where the committed residual draw fell back (hit max_tries)."""
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
    draw, exact = self.residual(kr, one(p), one(q))                      # [1, *D], [1]
    new = self.draw_one(kf, p)   # fresh drafts from this pass's p (as 'sjd').
    tokens = jnp.where(_over(commit, x), x, jnp.where(_over(after, x), new, x))
    tokens = jnp.where(_over(j == first, x), draw, tokens)
    fell = (first < w) & ~exact[0]
    counts = jnp.stack([(first < w).astype(jnp.int32), fell.astype(jnp.int32)])
    return tokens, commit, after, counts
