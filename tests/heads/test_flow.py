"""The flow-matching head against references that could disagree with it:

- the convention x_t = t x + (1 - t) eps, v = x - eps, and the loss (MSE to x - eps averaged over
  batch_mul draws) against numpy;
- the training t: logit-normal (sigmoid of N(mu, sigma)) and uniform, each by a KS test against
  scipy at seed 0;
- the Euler sampler exact on the straight-line (point-mass) velocity field (x* - x) / (1 - t),
  linear in x, for any step count; CFG on the velocity then lands exactly on u + s (c - u);
  Heun exact on a field linear in t, where Euler's error is exactly b / (2 S);
- CFG at scale 1 equals the conditional head (random parameters, same key);
- the trained head (tests/heads/ring.py, fixture ring_flow.npz) samples the 8-mode ring with
  both solvers;
- bad fields and temperatures fail in one line naming them.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from arjax.heads import build_head
from arjax.heads.flow import (TIME_SCALE, Flow, FlowFields, FlowHead, draw_times, integrate,
                              interpolate)
from tests.heads import ring


class _Tokens3:
  vocab_size, token_dim = 0, 3


def _point_mass_net(x, t, c):
  """The exact velocity toward a point mass at c: (c - x) / (1 - t) (t = TIME_SCALE * time)."""
  return (c - x) / (1.0 - t / TIME_SCALE)


def test_path_and_loss_follow_the_stated_convention():
  rng = np.random.default_rng(0)
  x, noise = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
  t = rng.uniform(size=(2, 5))
  got = np.asarray(interpolate(jnp.asarray(x), jnp.asarray(noise), jnp.asarray(t)))
  np.testing.assert_allclose(got, t[..., None] * x + (1 - t[..., None]) * noise, rtol=1e-5,
                             atol=1e-6)
  # The loss with a network that returns its condition c: per token the mean over M = 2 draws
  # of mean_c (c - (x - eps))^2, eps and t drawn as documented (split key: t, then eps).
  fields = FlowFields(width=8, depth=1, batch_mul=2, time_sampling="uniform")
  c = rng.normal(size=(2, 5, 3))
  dist = Flow(jnp.asarray(c, jnp.float32), net=lambda xt, tt, cc: cc + 0 * xt, fields=fields,
              channels=3)
  key = jax.random.key(4)
  loss, per_token = dist.loss(jnp.asarray(x, jnp.float32), key=key)
  eps = np.asarray(jax.random.normal(jax.random.split(key)[1], (2, 2, 5, 3)))
  want = ((c[None] - (x[None] - eps)) ** 2).mean(-1).mean(0)
  np.testing.assert_allclose(np.asarray(per_token), want, rtol=1e-5)
  np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-5)


@pytest.mark.parametrize("kind,mean,std", [("logit_normal", 0.0, 1.0), ("logit_normal", -0.5, 0.7),
                                           ("uniform", 0.0, 1.0)])
def test_training_times_follow_their_distribution(kind, mean, std):
  t = np.asarray(draw_times(jax.random.key(0), (20000,),
                            FlowFields(time_sampling=kind, logit_mean=mean, logit_std=std)))
  assert t.min() >= 0 and t.max() <= 1
  if kind == "uniform":
    cdf = stats.uniform.cdf
  else:
    cdf = lambda u: stats.norm.cdf((np.log(u) - np.log1p(-u) - mean) / std)
  # KS at seed 0: p > 0.01 for the right law; a wrong mean or std (e.g. 0 vs -0.5) gives p ~ 0.
  assert stats.kstest(t, cdf).pvalue > 0.01


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_euler_is_exact_on_the_straight_line_field_and_cfg_extrapolates(steps):
  rng = np.random.default_rng(steps)
  c_cond = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
  c_unc = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
  fields = FlowFields(width=8, depth=1, num_sampling_steps=steps, solver="euler")
  cond = Flow(c_cond, net=_point_mass_net, fields=fields, channels=4)
  unc = Flow(c_unc, net=_point_mass_net, fields=fields, channels=4)
  scale = jnp.array([1.0, 2.5, -0.5])
  plain, guided = map(np.asarray, jax.jit(lambda k: (
      cond.sample(k, temperature=1.7), cond.guide(unc, scale).sample(k)))(jax.random.key(0)))
  np.testing.assert_allclose(plain, c_cond, atol=2e-5)
  want = c_unc + np.asarray(scale)[:, None, None] * (c_cond - c_unc)
  np.testing.assert_allclose(guided, want, atol=5e-5)


@pytest.mark.parametrize("steps", [1, 4])
def test_heun_is_exact_on_a_field_linear_in_time_and_euler_is_off_by_b_over_2s(steps):
  a, b = 0.7, -1.3
  x0 = jnp.asarray(np.random.default_rng(0).normal(size=(5, 2)), jnp.float32)
  v = lambda x, t: jnp.full_like(x, a) + b * t
  heun = np.asarray(integrate(v, x0, steps, "heun"))
  euler = np.asarray(integrate(v, x0, steps, "euler"))
  np.testing.assert_allclose(heun, np.asarray(x0) + a + b / 2, atol=1e-6)
  np.testing.assert_allclose(euler, np.asarray(x0) + a + b / 2 - b / (2 * steps), atol=1e-6)


def test_cfg_at_scale_one_is_the_conditional_head():
  head = FlowHead(6, _Tokens3(), FlowFields(width=16, depth=2, num_sampling_steps=6,
                                            solver="heun"), rngs=nnx.Rngs(0))
  state = nnx.state(head, nnx.Param)   # random values in the zero-initialised layers too.
  leaves, tree = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  nnx.update(head, jax.tree.unflatten(
      tree, [jax.random.normal(k, l.shape) * 0.3 for k, l in zip(keys, leaves)]))
  h = jax.random.normal(jax.random.key(0), (4, 3, 6))

  @jax.jit
  def run(key):
    cond, unc = head(h), head(-h)
    return cond.sample(key), cond.guide(unc, 1.0).sample(key), cond.guide(unc, 2.0).sample(key)

  want, at_one, at_two = map(np.asarray, run(jax.random.key(5)))
  np.testing.assert_allclose(at_one, want, rtol=1e-5, atol=1e-5)
  assert np.abs(at_two - want).max() > 1e-2


@pytest.mark.parametrize("solver,steps", [("euler", 50), ("heun", 25)])
def test_trained_head_samples_the_eight_mode_ring(solver, steps):
  """Fixture ring_flow.npz (`python -m tests.heads.ring flow`: W 64, 3 blocks, logit-normal t,
  3000 Adam steps of batch 256 at seed 0). 2000 samples at seed 0, temperature 1, 50 network
  calls either way. Tolerances as the diffusion head's (test_diffusion.py): mode masses within
  0.125 +- 0.04 (5 binomial standard errors at 2000 draws), spread within 25 % of 0.15, under
  3 % off-mode, energy distance to 2000 ring draws below 0.005 (baselines at 2000 draws: another
  ring set 0.0011, a uniform circle without modes 0.0082, N(0, I) 0.066)."""
  head = ring.load("flow")
  head.fields = FlowFields(**{**ring.FLOW.__dict__, "solver": solver,
                              "num_sampling_steps": steps})
  x = ring.sample(head, 2000)
  frac, spread, off = ring.mode_stats(x)
  assert np.abs(frac - 0.125).max() < 0.04, frac
  assert abs(spread - ring.STD) < 0.25 * ring.STD, spread
  assert off < 0.03, off
  assert ring.energy_distance(x, ring.ring_samples(np.random.default_rng(1), 2000)) < 0.005


@pytest.mark.parametrize("field,value,message", [
    ("batch_mul", 0, r"model.head.batch_mul=0; expected an integer >= 1"),
    ("num_sampling_steps", 0, r"model.head.num_sampling_steps=0; expected an integer >= 1"),
    ("solver", "rk4", r"model.head.solver='rk4'; expected one of \['euler', 'heun'\]"),
    ("time_sampling", "beta", r"model.head.time_sampling='beta'; expected one of "
                              r"\['logit_normal', 'uniform'\]"),
    ("logit_std", 0.0, r"model.head.logit_std=0.0; expected a finite number > 0"),
    ("logit_mean", float("nan"), r"model.head.logit_mean=nan; expected a finite number"),
])
def test_bad_fields_fail_naming_the_field(field, value, message):
  c = ml_collections.ConfigDict({"model": {"head": {"name": "flow", field: value}}})
  with pytest.raises(ValueError, match=message):
    build_head(c, 8, _Tokens3(), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("temperature", [0.0, float("nan"), float("inf")])
def test_temperature_out_of_range_fails_naming_it(temperature):
  dist = Flow(jnp.zeros((1, 1, 4)), net=_point_mass_net, fields=FlowFields(), channels=4)
  with pytest.raises(ValueError, match=r"head 'flow' samples at temperature > 0 .* got "
                                       r"temperature="):
    dist.sample(jax.random.key(0), temperature=temperature)
  with pytest.raises(ValueError, match=r"head 'flow' samples at temperature > 0"):
    dist.guide(dist, 2.0).sample(jax.random.key(0), temperature=temperature)
