"""Diffusion head: MAR's diffusion loss (Li et al. 2024, "Autoregressive Image Generation without
Vector Quantization"; LTH14/mar models/diffloss.py with ADM's gaussian_diffusion and respace).

Per token, a small network eps_theta(x_t | t, z) (arjax.heads.adaln_mlp.AdaLNMLP: residual MLP
with adaLN on t_emb + Linear(z)) models p(x | z) by denoising diffusion:

  * forward process  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) over T = train_timesteps
    (1000) steps with ADM's cosine schedule abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2),
    beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999);
  * the network outputs 2C channels: eps (ε-prediction) and v in [-1, 1]-ish that interpolates
    the log variance of p(x_{t-1} | x_t) between the posterior's (clipped) log variance and
    log beta_t (ADM's LEARNED_RANGE: log var = (v+1)/2 log beta_t + (1-(v+1)/2) log var~_t);
  * loss per token: ADM's hybrid loss, mean_c (eps - eps_theta)^2 + L_vlb, where L_vlb is
    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits per channel (at t = 0 the
    discretized-Gaussian decoder NLL, bins of 2/255 as ADM's images) computed with the
    predicted eps held fixed (stop_gradient), so it trains the variance only;
    `diffusion_batch_mul` independent (t, eps) draws per token, averaged (MAR: 4);
  * sampling: ancestral DDPM over the schedule respaced to `num_sampling_steps` (ADM's
    space_timesteps with one section: timesteps round(i (T-1)/(S-1)) accumulated as ADM does,
    new betas 1 - abar_k / abar_{k-1} over the kept steps; the network sees the original
    timestep); x_S ~ N(0, I); x_{k-1} = mean + [k > 0] exp(log var / 2) * temperature * noise
    (MAR multiplies the noise std of every reverse step by the temperature; the start noise is
    not scaled); by default no clipping of the x_0 prediction (MAR: clip_denoised=False);
    `clip_denoised` = v > 0 clamps it to [-v, v] and recomputes the posterior mean (ADM);
  * the first reverse step: the cosine schedule's last beta is capped at 0.999, so
    abar_{T-1} ~ 2.4e-9, and the first step's posterior mean carries the network's eps error
    times sqrt(abar_prev / abar_{T-1}): ~32 over the full chain (abar_prev = abar_{T-2}), ~316
    with 100 respaced steps (abar_prev = abar_989 ~ 2.4e-4). A head whose eps error at t = T-1
    is 0.05 (the MNIST diffusion rows after 1000 steps of batch 32, docs/continuous.md) starts
    the respaced chain at |x| ~ 8 instead of ~1, off the inputs it was trained on, and the
    later steps amplify it (samples of std ~200); MAR reports the same early in training
    (LTH14/mar issues 27 and 70). `clip_denoised` at the data range bounds that first x_0 and
    removes the blow-up (tests/heads/test_diffusion.py, test_clip_denoised_*);
  * guidance (`Diffusion.guide`): inside every reverse step the network runs on the conditional
    and unconditional z with the same x_t and eps = eps_u + s (eps_c - eps_u); the variance is
    the conditional one (MAR's forward_with_cfg keeps each half's own variance channels and
    returns the conditional half).

`log_prob` is intractable and raises. The per-token value of `loss` is this training loss (not a
likelihood): the trainer's `nll` / `bits_per_dim` metrics report it for this head.

Legend: B batch, L positions, D width of h, W width of the MLP, C channels of a token,
M = diffusion_batch_mul, T training timesteps, S sampling steps.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from arjax.heads.adaln_mlp import AdaLNMLP
from arjax.heads.base import (HEADS, Distribution, GuidedHead, check_targets,
                              continuous_token_dim, weighted_mean)


def _positive_int(name: str, value, upper=None):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 or (
      upper is not None and value > upper):
    bound = "an integer >= 1" + (f" and <= {upper}" if upper is not None else "")
    raise ValueError(f"model.head.{name}={value!r}; expected {bound}")


@dataclasses.dataclass(frozen=True)
class DiffusionFields:
  width: int = 1024               # W of the denoising MLP (MAR-B 1024, L 1280, H 1536).
  depth: int = 6                  # residual adaLN blocks (MAR-B 6, L 8, H 12).
  diffusion_batch_mul: int = 4    # M (t, eps) draws per token in the loss (MAR: 4).
  num_sampling_steps: int = 100   # S respaced DDPM steps at sampling (MAR: 100).
  train_timesteps: int = 1000     # T of the cosine schedule (MAR / ADM: 1000).
  # Sampling only: clamp every reverse step's x_0 prediction to [-v, v] (ADM's clip_denoised,
  # which clamps to the image range [-1, 1]); 0 = no clamp (MAR: clip_denoised=False). Set it
  # to the data's range: see the note on the first reverse step in the module docstring.
  clip_denoised: float = 0.0

  def __post_init__(self):
    for name in ("width", "depth", "diffusion_batch_mul", "train_timesteps"):
      _positive_int(name, getattr(self, name))
    v = self.clip_denoised
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
      raise ValueError(f"model.head.clip_denoised={v!r}; expected a finite number >= 0 "
                       "(0: no clamp)")
    _positive_int("num_sampling_steps", self.num_sampling_steps, upper=self.train_timesteps)


def check_temperature(head: str, temperature):
  """One line unless temperature is a finite number > 0 (Python or numpy scalar)."""
  try:
    value = float(temperature)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return  # a traced temperature: the sampler validated it (SamplingConfig.validate).
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f"head {head!r} samples at temperature > 0 (a finite number scaling its "
                     f"noise), got temperature={temperature!r}")


# -- the schedule (float64 numpy, as ADM computes it) -----------------------------------------------
def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """ADM's cosine schedule: beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta), float64 [T]."""
  abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([min(1.0 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta)
                   for i in range(num_timesteps)], np.float64)


def respaced_timesteps(num_timesteps: int, count: int) -> np.ndarray:
  """The kept timesteps of ADM's space_timesteps(T, [count]) (one section), sorted int [count].

  Positions are accumulated by repeated addition of the stride (T-1)/(count-1) and rounded with
  Python's round, as ADM does, so that ties round the same way."""
  if not 1 <= count <= num_timesteps:
    raise ValueError(f"cannot respace {num_timesteps} timesteps to {count}")
  stride = 1.0 if count <= 1 else (num_timesteps - 1) / (count - 1)
  kept, pos = [], 0.0
  for _ in range(count):
    kept.append(round(pos))
    pos += stride
  return np.array(sorted(set(kept)), np.int64)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """A discrete Gaussian diffusion's float64 coefficient tables [K] (K steps; ADM's names)."""
  betas: np.ndarray
  timestep_map: np.ndarray          # the original timestep of each step (fed to the network).

  @functools.cached_property
  def tables(self):
    b = self.betas
    ac = np.cumprod(1.0 - b)
    ac_prev = np.append(1.0, ac[:-1])
    post_var = b * (1.0 - ac_prev) / (1.0 - ac)
    # The posterior variance is 0 at the first step: ADM clips its log to the second step's.
    # One-step schedules have no second step; log beta stands in (no noise is added at step 0).
    post_logvar = (np.log(np.append(post_var[1], post_var[1:])) if len(b) > 1 else np.log(b))
    return dict(
        betas=b, log_betas=np.log(b), alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
        sqrt_ac=np.sqrt(ac), sqrt_1m_ac=np.sqrt(1.0 - ac), sqrt_recip_ac=np.sqrt(1.0 / ac),
        sqrt_recipm1_ac=np.sqrt(1.0 / ac - 1.0), posterior_variance=post_var,
        posterior_log_variance_clipped=post_logvar,
        coef1=b * np.sqrt(ac_prev) / (1.0 - ac),
        coef2=(1.0 - ac_prev) * np.sqrt(1.0 - b) / (1.0 - ac))

  def at(self, name: str, t):
    """The table `name` at steps t (int array) as float32, broadcastable with a trailing C."""
    return jnp.asarray(self.tables[name], jnp.float32)[t][..., None]


@functools.lru_cache(maxsize=None)
def train_schedule(num_timesteps: int) -> Schedule:
  return Schedule(cosine_betas(num_timesteps), np.arange(num_timesteps))


@functools.lru_cache(maxsize=None)
def sampling_schedule(num_timesteps: int, steps: int) -> Schedule:
  """ADM's SpacedDiffusion: betas 1 - abar_k / abar_{k-1} over the kept timesteps."""
  ac = train_schedule(num_timesteps).tables["alphas_cumprod"]
  kept = respaced_timesteps(num_timesteps, steps)
  betas, last = [], 1.0
  for i in kept:
    betas.append(1.0 - ac[i] / last)
    last = ac[i]
  return Schedule(np.array(betas, np.float64), kept)


# -- the Gaussian pieces (jax, float32), each checked against float64 numpy in the tests --------
def q_sample(sched: Schedule, x0, t, noise):
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; x0, noise [..., C], t int [...]."""
  return sched.at("sqrt_ac", t) * x0 + sched.at("sqrt_1m_ac", t) * noise


def q_posterior(sched: Schedule, x0, xt, t):
  """(mean, log variance clipped) of q(x_{t-1} | x_t, x_0)."""
  mean = sched.at("coef1", t) * x0 + sched.at("coef2", t) * xt
  return mean, jnp.broadcast_to(sched.at("posterior_log_variance_clipped", t), mean.shape)


def p_mean_logvar(sched: Schedule, out, xt, t):
  """Network output [..., 2C] (eps, v) at x_t -> (mean, log variance, x0 prediction) of
  p(x_{t-1} | x_t) with ADM's learned-range variance."""
  eps, v = jnp.split(out, 2, axis=-1)
  frac = (v + 1.0) / 2.0
  logvar = (frac * sched.at("log_betas", t)
            + (1.0 - frac) * sched.at("posterior_log_variance_clipped", t))
  x0 = sched.at("sqrt_recip_ac", t) * xt - sched.at("sqrt_recipm1_ac", t) * eps
  mean, _ = q_posterior(sched, x0, xt, t)
  return mean, logvar, x0


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale):
  """ADM's decoder log-likelihood of x in [-1, 1] in bins of 2/255 (edge bins open), in nats,
  with the tanh approximation of the normal CDF."""
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def vlb_term(sched: Schedule, x0, xt, t, out):
  """ADM's L_vlb of one draw in bits per channel, [...]: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
  for t > 0, the decoder NLL -log p(x_0 | x_1) at t = 0; out [..., 2C] the network output."""
  true_mean, true_logvar = q_posterior(sched, x0, xt, t)
  mean, logvar, _ = p_mean_logvar(sched, out, xt, t)
  kl = normal_kl(true_mean, true_logvar, mean, logvar).mean(-1) / math.log(2.0)
  nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * logvar).mean(-1) / math.log(2.0)
  return jnp.where(t == 0, nll, kl)


def hybrid_loss(sched: Schedule, net, x0, c, t, noise):
  """ADM's hybrid loss per draw [...]: mean_c (noise - eps)^2 + L_vlb with eps held fixed.
  x0, noise [..., C]; t int [...]; c broadcastable to [..., W]."""
  xt = q_sample(sched, x0, t, noise)
  out = net(xt, t.astype(jnp.float32), c)
  eps, v = jnp.split(out, 2, axis=-1)
  mse = jnp.square(noise - eps).mean(-1)
  frozen = jnp.concatenate([jax.lax.stop_gradient(eps), v], axis=-1)
  return mse + vlb_term(sched, x0, xt, t, frozen)


def ddpm_sample(sched: Schedule, eps_and_v, shape, key, temperature, clip_denoised: float = 0.0):
  """Ancestral sampling over `sched`: eps_and_v(x_t, original timestep float) -> [..., 2C].
  clip_denoised > 0: every step's x0 prediction clamped to [-v, v] (ADM's clip_denoised).
  Returns x_0 float32 of `shape`."""
  k0, kloop = jax.random.split(key)
  num = len(sched.betas)
  tmap = jnp.asarray(sched.timestep_map, jnp.float32)

  def body(j, x):
    i = num - 1 - j
    idx = jnp.full(shape[:-1], i, jnp.int32)
    mean, logvar, x0 = p_mean_logvar(sched, eps_and_v(x, tmap[i]), x, idx)
    if clip_denoised > 0:
      mean, _ = q_posterior(sched, jnp.clip(x0, -clip_denoised, clip_denoised), x, idx)
    noise = jax.random.normal(jax.random.fold_in(kloop, j), shape, jnp.float32)
    return mean + (i > 0) * jnp.exp(0.5 * logvar) * noise * temperature

  return jax.lax.fori_loop(0, num, body, jax.random.normal(k0, shape, jnp.float32))


class Diffusion(Distribution):
  """c [B, L, W]: the embedded condition Linear(z) of each position; `net` the head's network
  (static: called inside the trace that built this distribution)."""
  c: jax.Array
  net: Any = struct.field(pytree_node=False, default=None)
  fields: DiffusionFields = struct.field(pytree_node=False, default=DiffusionFields())
  channels: int = struct.field(pytree_node=False, default=0)

  head_name = "diffusion"

  def loss(self, targets, key=None, weights=None):
    """(weighted mean, per-token [B, L]) hybrid loss averaged over M (t, eps) draws per token."""
    check_targets(targets, (self.channels,), jnp.float32, self.c.shape[:2], self.head_name)
    if key is None:
      raise ValueError(f"head {self.head_name!r} draws (t, eps) in its loss: pass key=")
    f = self.fields
    sched = train_schedule(f.train_timesteps)
    m = f.diffusion_batch_mul
    kt, ke = jax.random.split(key)
    x0 = jnp.broadcast_to(targets.astype(jnp.float32), (m,) + targets.shape)
    t = jax.random.randint(kt, x0.shape[:-1], 0, f.train_timesteps)
    noise = jax.random.normal(ke, x0.shape, jnp.float32)
    per_token = hybrid_loss(sched, self.net, x0, self.c, t, noise).mean(0)
    return weighted_mean(per_token, weights), per_token

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.head_name, temperature)
    sched = sampling_schedule(self.fields.train_timesteps, self.fields.num_sampling_steps)
    return ddpm_sample(sched, lambda x, t: self.net(x, t, self.c),
                       self.c.shape[:2] + (self.channels,), key, temperature,
                       self.fields.clip_denoised)

  def guide(self, uncond: "Diffusion", scale) -> "GuidedDiffusion":
    return GuidedDiffusion.of(self, uncond, scale)


class GuidedDiffusion(GuidedHead):
  """CFG on eps inside the reverse loop; scale [B, L]."""
  cond: Diffusion

  head_name = "diffusion (guided)"

  def guided_output(self, x, t):
    """[eps_u + s (eps_c - eps_u), v_c] at x_t [B, L, C]: one network call on both halves."""
    out_c, out_u = self.both(self.cond.net, x, t)
    eps_c, v_c = jnp.split(out_c, 2, axis=-1)
    eps_u = jnp.split(out_u, 2, axis=-1)[0]
    return jnp.concatenate([self.mix(eps_c, eps_u), v_c], axis=-1)

  def sample(self, key, *, temperature: float = 1.0):
    check_temperature(self.cond.head_name, temperature)
    f = self.cond.fields
    sched = sampling_schedule(f.train_timesteps, f.num_sampling_steps)
    return ddpm_sample(sched, self.guided_output, self.cond.c.shape[:2] + (self.cond.channels,),
                       key, temperature, f.clip_denoised)


@HEADS.register("diffusion", fields=DiffusionFields)
class DiffusionHead(nnx.Module):
  """h [B, L, D] -> Diffusion over continuous tokens [B, L, C] (C = tokenizer.token_dim)."""

  token_dtype = jnp.float32
  sample_options = ()   # the temperature only; the step count is the field num_sampling_steps.

  def __init__(self, dim: int, tokenizer, fields: DiffusionFields = DiffusionFields(), *,
               rngs: nnx.Rngs, dtype=None):
    c = continuous_token_dim(tokenizer, head="diffusion")
    self.token_shape = (c,)
    self.fields = fields
    self.net = AdaLNMLP(c, fields.width, 2 * c, dim, fields.depth, rngs=rngs, dtype=dtype)

  def __call__(self, h, cond=None) -> Diffusion:
    del cond
    return Diffusion(self.net.embed_cond(h), net=self.net, fields=self.fields,
                     channels=self.token_shape[0])

