"""The diffusion head (MAR's diffusion loss) against references that could disagree with it:

- the cosine schedule and its respacing against the values of the official MAR code: the fixture
  tests/heads/fixtures/mar_schedules.npz was written by tests/heads/fixtures/make_mar_schedules.py
  running LTH14/mar's diffusion/ package (commit fe470ac2, create_diffusion with
  noise_schedule='cosine', timestep_respacing '' and '100', '64', '16', '8', '2') outside the
  repository, with `torch` replaced by an empty module: the schedule code is numpy only;
- q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0), the learned-range p(x_{t-1} | x_t), the
  KL / decoder-NLL VLB term and the hybrid loss against float64 numpy written from the formulas
  (Ho et al. 2020; Nichol & Dhariwal 2021) on the fixture's betas;
- the DDPM sampler: on the exact eps of a point mass it lands on the point (and CFG on eps lands
  on the extrapolated point u + s (c - u)); on eps = 0 the sample is Gaussian with a variance
  computed in float64, at temperatures 1 and 0.5 (the temperature scales every reverse step's
  noise, not the start noise);
- CFG at scale 1 equals the conditional head (random parameters, same key);
- the trained head (tests/heads/ring.py, fixture ring_diffusion.npz) samples the 8-mode ring
  over the full 1000-step chain;
- bad fields, temperatures and targets fail in one line naming them.
"""
import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from arjax.heads import build_head
from arjax.heads.diffusion import (Diffusion, DiffusionFields, DiffusionHead, ddpm_sample,
                                   hybrid_loss, p_mean_logvar, q_posterior, q_sample,
                                   sampling_schedule, train_schedule, vlb_term)
from tests.heads import ring

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "mar_schedules.npz")


@pytest.fixture(scope="module")
def official():
  return dict(np.load(FIXTURE))


class _Tokens3:
  vocab_size, token_dim = 0, 3


# -- the schedule -------------------------------------------------------------------------------
def test_cosine_schedule_matches_the_official_mar_values(official):
  t = train_schedule(1000).tables
  names = {"betas": "betas", "alphas_cumprod": "alphas_cumprod",
           "posterior_variance": "posterior_variance",
           "posterior_log_variance_clipped": "posterior_log_variance_clipped",
           "coef1": "posterior_mean_coef1", "coef2": "posterior_mean_coef2"}
  for ours, theirs in names.items():
    np.testing.assert_allclose(t[ours], official[f"train_{theirs}"], rtol=1e-12, atol=0,
                               err_msg=ours)
  assert t["betas"].max() == pytest.approx(0.999)  # the max_beta clip is reached at the end.


@pytest.mark.parametrize("steps", [100, 64, 16, 8, 2])
def test_respacing_matches_the_official_mar_schedule(official, steps):
  s = sampling_schedule(1000, steps)
  np.testing.assert_array_equal(s.timestep_map, official[f"s{steps}_timestep_map"])
  for ours, theirs in {"betas": "betas", "alphas_cumprod": "alphas_cumprod",
                       "posterior_log_variance_clipped": "posterior_log_variance_clipped",
                       "coef1": "posterior_mean_coef1", "coef2": "posterior_mean_coef2"}.items():
    np.testing.assert_allclose(s.tables[ours], official[f"s{steps}_{theirs}"], rtol=1e-12,
                               err_msg=f"{steps} steps: {ours}")


# -- Gaussian pieces against float64 numpy -----------------------------------------------------------
def _np_tables(betas):
  """ADM's quantities written from the formulas, float64."""
  ac = np.cumprod(1 - betas)
  ac_prev = np.concatenate([[1.0], ac[:-1]])
  post_var = betas * (1 - ac_prev) / (1 - ac)
  return ac, ac_prev, post_var, np.log(np.concatenate([[post_var[1]], post_var[1:]]))


def _np_approx_cdf(x):
  return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_vlb(betas, x0, xt, t, eps, v):
  ac, ac_prev, _, post_logvar = _np_tables(betas)
  e = lambda a: a[t][..., None]
  true_mean = (e(np.sqrt(ac_prev) * betas / (1 - ac)) * x0
               + e(np.sqrt(1 - betas) * (1 - ac_prev) / (1 - ac)) * xt)
  true_logvar = e(post_logvar)
  x0_pred = (xt - e(np.sqrt(1 - ac)) * eps) / e(np.sqrt(ac))
  mean = (e(np.sqrt(ac_prev) * betas / (1 - ac)) * x0_pred
          + e(np.sqrt(1 - betas) * (1 - ac_prev) / (1 - ac)) * xt)
  frac = (v + 1) / 2
  logvar = frac * e(np.log(betas)) + (1 - frac) * true_logvar
  kl = 0.5 * (-1 + logvar - true_logvar + np.exp(true_logvar - logvar)
              + (true_mean - mean) ** 2 * np.exp(-logvar))
  inv = np.exp(-0.5 * logvar)
  cp, cm = _np_approx_cdf(inv * (x0 - mean + 1 / 255)), _np_approx_cdf(inv * (x0 - mean - 1 / 255))
  logp = np.where(x0 < -0.999, np.log(np.maximum(cp, 1e-12)),
                  np.where(x0 > 0.999, np.log(np.maximum(1 - cm, 1e-12)),
                           np.log(np.maximum(cp - cm, 1e-12))))
  out = np.where(t == 0, -logp.mean(-1), kl.mean(-1)) / np.log(2)
  return out, mean, logvar


def _draws(n=64, c=3, seed=0):
  rng = np.random.default_rng(seed)
  # t: both ends and random steps up to 980; beyond, 1/sqrt(abar_t) exceeds 100 and the float32
  # x0 prediction from eps loses digits (tested apart below with a relative tolerance).
  t = np.concatenate([[0, 0, 1, 980], rng.integers(0, 981, n - 4)])
  x0 = np.clip(rng.normal(size=(n, c)) * 0.7, -1.2, 1.2)
  x0[0, 0], x0[1, 1] = -1.0, 1.0  # the open edge bins of the decoder likelihood at t = 0.
  return t, x0, rng.normal(size=(n, c)), rng.normal(size=(n, c)), rng.uniform(-1, 1, (n, c))


def test_forward_posterior_and_vlb_match_float64_numpy(official):
  betas = official["train_betas"]
  ac, ac_prev, post_var, _ = _np_tables(betas)
  sched = train_schedule(1000)
  t, x0, noise, eps, v = _draws()
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  # q(x_t | x_0): mean sqrt(abar) x0, variance 1 - abar.
  xt = np.sqrt(ac[t])[:, None] * x0 + np.sqrt(1 - ac[t])[:, None] * noise
  out = f32(np.concatenate([eps, v], -1))

  @jax.jit  # one compile for all the pieces.
  def pieces(x0, xt, t, noise, out):
    return (q_sample(sched, x0, t, noise), q_posterior(sched, x0, xt, t),
            p_mean_logvar(sched, out, xt, t), vlb_term(sched, x0, xt, t, out))

  got_xt, (mean, logvar), (pmean, plogvar, _), got_vlb = jax.tree.map(
      np.asarray, pieces(f32(x0), f32(xt), jnp.asarray(t), f32(noise), out))
  np.testing.assert_allclose(got_xt, xt, rtol=1e-5, atol=1e-6)
  # the posterior's mean and (clipped log) variance.
  want_mean = ((np.sqrt(ac_prev[t]) * betas[t] / (1 - ac[t]))[:, None] * x0
               + (np.sqrt(1 - betas[t]) * (1 - ac_prev[t]) / (1 - ac[t]))[:, None] * xt)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
  pos = t > 0
  np.testing.assert_allclose(np.exp(logvar[pos, 0]), post_var[t[pos]], rtol=1e-5)
  np.testing.assert_allclose(np.exp(logvar[~pos, 0]), post_var[1], rtol=1e-5)
  # p(x_{t-1} | x_t) with the learned range, and the VLB term (bits per channel).
  want_vlb, want_pmean, want_plogvar = _np_vlb(betas, x0, xt, t, eps, v)
  np.testing.assert_allclose(pmean, want_pmean, rtol=1e-4, atol=2e-5)
  np.testing.assert_allclose(plogvar, want_plogvar, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got_vlb, want_vlb, rtol=2e-4, atol=2e-5)
  assert (want_vlb[t == 0] > 0).all() and (want_vlb > 0).any()


def test_vlb_near_the_end_of_the_chain_within_float32_cancellation(official):
  # At t >= 990, 1/sqrt(abar_t) > 150: x0_pred = (x_t - sqrt(1 - abar) eps) / sqrt(abar) cancels
  # in float32; the term still agrees to 1 % with float64.
  betas = official["train_betas"]
  t, x0, noise, eps, v = _draws(16, seed=1)
  t = np.full_like(t, 995)
  ac = _np_tables(betas)[0]
  xt = np.sqrt(ac[t])[:, None] * x0 + np.sqrt(1 - ac[t])[:, None] * noise
  want = _np_vlb(betas, x0, xt, t, eps, v)[0]
  got = np.asarray(vlb_term(train_schedule(1000), jnp.asarray(x0, jnp.float32),
                            jnp.asarray(xt, jnp.float32), jnp.asarray(t),
                            jnp.asarray(np.concatenate([eps, v], -1), jnp.float32)))
  np.testing.assert_allclose(got, want, rtol=1e-2)


def test_hybrid_loss_is_mse_plus_vlb_and_the_vlb_trains_only_the_variance(official):
  betas = official["train_betas"]
  t, x0, noise, eps, v = _draws(seed=2)
  out = jnp.asarray(np.concatenate([eps, v], -1), jnp.float32)
  net = lambda x, tt, c: c          # the "network" returns its condition: the fixed output.
  sched = train_schedule(1000)
  loss = hybrid_loss(sched, net, jnp.asarray(x0, jnp.float32), out, jnp.asarray(t),
                     jnp.asarray(noise, jnp.float32))
  ac = _np_tables(betas)[0]
  xt = np.sqrt(ac[t])[:, None] * x0 + np.sqrt(1 - ac[t])[:, None] * noise
  want = ((noise - eps) ** 2).mean(-1) + _np_vlb(betas, x0, xt, t, eps, v)[0]
  np.testing.assert_allclose(np.asarray(loss), want, rtol=2e-4, atol=2e-5)
  grad = jax.grad(lambda o: hybrid_loss(sched, net, jnp.asarray(x0, jnp.float32), o,
                                        jnp.asarray(t), jnp.asarray(noise, jnp.float32)).sum())(out)
  # d/d eps of the loss is the MSE's alone, 2 (eps - noise) / C: the VLB sees eps frozen.
  np.testing.assert_allclose(np.asarray(grad)[:, :3], 2 * (eps - noise) / 3, rtol=1e-5,
                             atol=1e-6)
  assert np.abs(np.asarray(grad)[:, 3:]).max() > 0  # the variance channels get the VLB.


def test_loss_averages_diffusion_batch_mul_draws_per_token():
  head = DiffusionHead(4, _Tokens3(), DiffusionFields(width=16, depth=1, diffusion_batch_mul=3),
                       rngs=nnx.Rngs(0))
  h = jax.random.normal(jax.random.key(0), (2, 5, 4))
  x = jax.random.normal(jax.random.key(1), (2, 5, 3))
  w = jnp.array([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1]], jnp.float32)

  @jax.jit
  def run(key):
    dist = head(h)
    loss, per_token = dist.loss(x, key=key, weights=w)
    kt, ke = jax.random.split(key)   # the draws the loss documents: t [M, B, L], eps [M, B, L, C].
    t = jax.random.randint(kt, (3, 2, 5), 0, 1000)
    noise = jax.random.normal(ke, (3, 2, 5, 3))
    draws = jnp.stack([hybrid_loss(train_schedule(1000), head.net, x, dist.c, t[m], noise[m])
                       for m in range(3)])
    return loss, per_token, draws

  loss, per_token, draws = map(np.asarray, run(jax.random.key(7)))
  np.testing.assert_allclose(per_token, draws.mean(0), rtol=1e-5)
  np.testing.assert_allclose(float(loss), (draws.mean(0) * w).sum() / w.sum(), rtol=1e-5)
  assert np.std(draws, axis=0).min() > 0   # three different (t, eps) draws per token.


# -- sampling -------------------------------------------------------------------------------------
def _point_mass_net(x, t, c):
  """The exact eps of a point mass at c: (x_t - sqrt(abar_t) c) / sqrt(1 - abar_t) (t the
  original timestep), and a variance output of 0.3."""
  ac = jnp.asarray(train_schedule(1000).tables["alphas_cumprod"], jnp.float32)[
      jnp.asarray(t).astype(jnp.int32)]
  eps = (x - jnp.sqrt(ac) * c) / jnp.sqrt(1 - ac)
  return jnp.concatenate([eps, jnp.full_like(eps, 0.3)], -1)


@pytest.mark.parametrize("steps", [100, 8])
def test_ddpm_lands_on_a_point_mass_and_cfg_on_eps_extrapolates(steps):
  fields = DiffusionFields(width=8, depth=1, num_sampling_steps=steps)
  rng = np.random.default_rng(0)
  c_cond = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
  c_unc = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
  cond = Diffusion(c_cond, net=_point_mass_net, fields=fields, channels=4)
  unc = Diffusion(c_unc, net=_point_mass_net, fields=fields, channels=4)
  scale = jnp.array([1.0, 3.0, 0.5])
  plain, got = map(np.asarray, jax.jit(lambda key: (
      cond.sample(key, temperature=1.3), cond.guide(unc, scale).sample(key)))(jax.random.key(3)))
  np.testing.assert_allclose(plain, c_cond, atol=2e-4)
  want = c_unc + np.asarray(scale)[:, None, None] * (c_cond - c_unc)
  np.testing.assert_allclose(got, want, atol=5e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ddpm_noise_scales_with_the_temperature_at_every_step(temperature):
  # eps = 0 and v = v0: x_{k-1} = (coef1_k / sqrt(abar_k) + coef2_k) x_k + tau sigma_k n_k, a
  # linear Gaussian chain from x_S ~ N(0, 1): Var x_0 = prod a_k^2 + tau^2 sum_k sigma_k^2
  # prod_{j<k} a_j^2 (float64). S = 40000 draws, seed 0; tolerance 5 standard errors of the
  # sample variance (var sqrt(2 / S)).
  v0, steps = -0.4, 20
  sched = sampling_schedule(1000, steps)
  tb = sched.tables
  a = tb["coef1"] / np.sqrt(tb["alphas_cumprod"]) + tb["coef2"]
  frac = (v0 + 1) / 2
  sigma2 = np.exp(frac * tb["log_betas"] + (1 - frac) * tb["posterior_log_variance_clipped"])
  var = 1.0
  for k in range(steps - 1, -1, -1):
    var = a[k] ** 2 * var + (temperature ** 2 * sigma2[k] if k > 0 else 0.0)
  net = lambda x, t: jnp.concatenate([jnp.zeros_like(x), jnp.full_like(x, v0)], -1)
  s = 40000
  x = np.asarray(jax.jit(lambda k: ddpm_sample(sched, net, (s, 1), k, temperature))(
      jax.random.key(0)))
  assert abs(x.mean()) < 5 * math.sqrt(var / s)
  assert abs(x.var() - var) < 5 * var * math.sqrt(2 / s), (x.var(), var)


def _bounded_gaussian_net(delta, sigma=0.5):
  """eps of data N(0, sigma^2) per channel, sqrt(1 - abar) x_t / (abar sigma^2 + 1 - abar), plus
  a constant error delta, clamped to [-4, 4]: a network whose output stays bounded off the
  inputs it was trained on (MAR's adaLN MLP ends in a LayerNorm). delta = 0.05 is the eps error
  at t = 999 of the MNIST diffusion row after 1000 steps (docs/continuous.md)."""
  ac = jnp.asarray(train_schedule(1000).tables["alphas_cumprod"], jnp.float32)

  def net(x, t, c):
    del c
    a = ac[jnp.asarray(t).astype(jnp.int32)]
    eps = jnp.sqrt(1 - a) * x / (a * sigma ** 2 + 1 - a) + delta
    return jnp.concatenate([jnp.clip(eps, -4.0, 4.0), jnp.zeros_like(x)], -1)

  return net


@pytest.fixture(scope="module")
def bounded_samples():
  """Samples [4000, 2] of the bounded net with delta 0.05 at seed 0: 100 respaced steps without
  and with clip_denoised = 2 (the data N(0, 0.25) lie within +-2 with probability 1 - 6e-5), and
  1000 steps without; CFG at scale 1.5 between two copies of the net with clip_denoised = 2."""
  net = _bounded_gaussian_net(0.05)
  c = jnp.zeros((4000, 1, 1), jnp.float32)

  def dist(steps, clip):
    f = DiffusionFields(width=8, depth=1, num_sampling_steps=steps, clip_denoised=clip)
    return Diffusion(c, net=net, fields=f, channels=2)

  @jax.jit
  def run(key):
    return (dist(100, 0.0).sample(key), dist(100, 2.0).sample(key), dist(1000, 0.0).sample(key),
            dist(100, 2.0).guide(dist(100, 2.0), 1.5).sample(key))

  return [np.asarray(x)[:, 0] for x in run(jax.random.key(0))]


def test_clip_denoised_keeps_the_respaced_chain_on_the_data(bounded_samples):
  """The MNIST diffusion rows' failure in miniature: 100 respaced steps from t = 999 multiply the
  eps error by ~316 in the first step, the bounded network cannot undo the off-distribution x,
  and the samples' std ends far above the data's 0.5 (seed 0: ~75); the full 1000-step chain
  (first-step factor ~32) and the clamped x_0 at 100 steps give std 0.5. Tolerance: 0.03 (the
  sample std's standard error at 8000 values is 0.004; the net's eps error biases it ~0.01).
  Before clip_denoised existed, the 100-step chain was the only one: the test's first line
  holds and no setting of the head reached std 0.5 in 100 steps."""
  plain, clipped, full, guided = bounded_samples
  assert plain.std() > 5.0, plain.std()            # the defect, without the clamp.
  for x in (clipped, full, guided):
    assert abs(x.std() - 0.5) < 0.03, x.std()
    # The constant eps error shifts every chain's mean by ~ -0.08 (seed 0: -0.085 over 1000
    # steps, -0.076 clamped at 100): the clamped chain agrees with the full one.
    assert abs(x.mean() - full.mean()) < 0.03, (x.mean(), full.mean())
  assert np.abs(clipped).max() <= 2.0 + 1e-6      # the final x_0 is clamped too.


def _random_params_head(fields, seed=0):
  head = DiffusionHead(6, _Tokens3(), fields, rngs=nnx.Rngs(seed))
  # MAR zero-initialises the adaLN and output layers; give every parameter a random value so
  # the conditional and unconditional predictions differ.
  state = nnx.state(head, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  nnx.update(head, jax.tree.unflatten(
      tree, [jax.random.normal(k, l.shape) * 0.3 for k, l in zip(keys, leaves)]))
  return head


def test_cfg_at_scale_one_is_the_conditional_head():
  head = _random_params_head(DiffusionFields(width=16, depth=2, num_sampling_steps=10))
  h = jax.random.normal(jax.random.key(0), (4, 3, 6))

  @jax.jit
  def run(key):
    cond, unc = head(h), head(-h)
    return cond.sample(key), cond.guide(unc, 1.0).sample(key), cond.guide(unc, 2.0).sample(key)

  want, at_one, at_two = map(np.asarray, run(jax.random.key(5)))
  np.testing.assert_allclose(at_one, want, rtol=1e-5, atol=1e-5)
  assert np.abs(at_two - want).max() > 1e-2  # scale 2 moves the samples: the unconditional
  # branch is live.


# -- the trained head on a known 2-D distribution --------------------------------------------------
def test_trained_head_samples_the_eight_mode_ring():
  """Fixture ring_diffusion.npz (`python -m tests.heads.ring diffusion`: W 64, 3 blocks, 3000
  Adam steps of batch 256 at seed 0). 1000 samples at seed 0, temperature 1, over the full
  1000-step chain (num_sampling_steps = 1000: no respacing; see docs/heads.md for why this small
  head needs it). Tolerances: each mode's mass within 0.125 +- 0.05 (5 binomial standard
  errors, 0.0105 each); spread around the mode within 25 % of the true 0.15; under 3 % of
  samples off every mode; energy distance to 1000 ring draws below 0.005 (seed-0 baselines
  at 1000 draws: another ring set 0.0011, a uniform circle of the same radius without modes
  0.0106, N(0, I) 0.066)."""
  head = ring.load("diffusion")
  head.fields = dataclasses.replace(ring.DIFFUSION, num_sampling_steps=1000)
  x = ring.sample(head, 1000)
  frac, spread, off = ring.mode_stats(x)
  assert np.abs(frac - 0.125).max() < 0.05, frac
  assert abs(spread - ring.STD) < 0.25 * ring.STD, spread
  assert off < 0.03, off
  assert ring.energy_distance(x, ring.ring_samples(np.random.default_rng(1), 1000)) < 0.005


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,message", [
    ("diffusion_batch_mul", 0, r"model.head.diffusion_batch_mul=0; expected an integer >= 1"),
    ("diffusion_batch_mul", 2.5, r"model.head.diffusion_batch_mul=2.5; expected an integer"),
    ("num_sampling_steps", 0, r"model.head.num_sampling_steps=0; expected an integer >= 1 and "
                              r"<= 1000"),
    ("num_sampling_steps", 1001, r"model.head.num_sampling_steps=1001; expected .* <= 1000"),
    ("width", -3, r"model.head.width=-3; expected an integer >= 1"),
    ("clip_denoised", -1.0, r"model.head.clip_denoised=-1.0; expected a finite number >= 0"),
    ("clip_denoised", float("inf"), r"model.head.clip_denoised=inf; expected a finite number"),
])
def test_bad_fields_fail_naming_the_field(field, value, message):
  c = ml_collections.ConfigDict({"model": {"head": {"name": "diffusion", field: value}}})
  with pytest.raises(ValueError, match=message):
    build_head(c, 8, _Tokens3(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf")])
def test_temperature_out_of_range_fails_naming_it(temperature):
  dist = Diffusion(jnp.zeros((1, 1, 4)), net=_point_mass_net,
                   fields=DiffusionFields(num_sampling_steps=2), channels=4)
  with pytest.raises(ValueError, match=r"head 'diffusion' samples at temperature > 0 .* got "
                                       r"temperature="):
    dist.sample(jax.random.key(0), temperature=temperature)
  with pytest.raises(ValueError, match=r"head 'diffusion' samples at temperature > 0"):
    dist.guide(dist, 2.0).sample(jax.random.key(0), temperature=temperature)


def test_wrong_targets_and_missing_key_fail_in_one_line():
  dist = Diffusion(jnp.zeros((2, 5, 8)), net=_point_mass_net, fields=DiffusionFields(),
                   channels=3)
  with pytest.raises(ValueError, match=r"head 'diffusion' takes targets \[2, 5, 3\] of float32, "
                                       r"got \[2, 5, 4\] of float32"):
    dist.loss(jnp.zeros((2, 5, 4)), key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"head 'diffusion' draws \(t, eps\) in its loss"):
    dist.loss(jnp.zeros((2, 5, 3)))
  with pytest.raises(ValueError, match="no tractable log-probability"):
    dist.log_prob(jnp.zeros((2, 5, 3)))
