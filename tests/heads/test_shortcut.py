"""FAR-fast's shortcut head (arjax/heads/shortcut.py) against references that could disagree:

- the self-consistency target sg[(s(x_t, t, d) + s(x_t + d s(x_t, t, d), t + d, d)) / 2] against
  a float64 numpy transcription on a nonlinear stand-in network;
- with no self-consistency draws the loss is the flow head's: per token the mean over M draws of
  mean_c (s(x_t, t, 0) - (x - eps))^2, t and eps drawn as arjax.heads.flow's (split key);
- the consistency draws: d and t on the documented dyadic grid, loss against numpy;
- one step of size 1 on a velocity field linear in x (the point mass: (c - x) / (1 - t), whose
  average velocity over [0, 1] is c - x_0) lands exactly on c, and CFG on it on u + w (c - u);
- the trained head (fixture ring_shortcut.npz, `python -m tests.heads.ring shortcut`: W 64,
  3 blocks, max_steps 8, 3000 Adam steps) samples the 8-mode ring in 1, 2 and 4 steps;
- step counts out of range fail naming the field.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.heads.flow import draw_times
from arjax.heads.shortcut import (Shortcut, ShortcutFields, consistency_target,
                                  shortcut_integrate)
from tests.heads import ring


class _FakeHead:
  """head.step(x, t, d, c) = tanh(x) * (1 + t) + d * c + x^2 / 3: nonlinear in x, t and d."""

  @staticmethod
  def step(x, t, d, c):
    t = jnp.asarray(t)[..., None]
    d = jnp.asarray(d)[..., None]
    return jnp.tanh(x) * (1 + t) + d * c + x ** 2 / 3


def _np_step(x, t, d, c):
  return np.tanh(x) * (1 + t[..., None]) + d[..., None] * c + x ** 2 / 3


def test_consistency_target_matches_numpy():
  rng = np.random.default_rng(0)
  x, c = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 5, 2))
  t, d = rng.uniform(0, 0.5, size=(3, 5)), rng.choice([0.5, 0.25, 0.125], size=(3, 5))
  net = lambda xx, tt, dd: _FakeHead.step(xx, tt, dd, jnp.asarray(c, jnp.float32))
  got = np.asarray(consistency_target(net, *(jnp.asarray(a, jnp.float32) for a in (x, t, d))))
  s1 = _np_step(x, t, d, c)
  s2 = _np_step(x + d[..., None] * s1, t + d, d, c)
  np.testing.assert_allclose(got, (s1 + s2) / 2, rtol=1e-5, atol=1e-5)


def test_flow_only_loss_is_the_flow_heads_form():
  rng = np.random.default_rng(1)
  x, c = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
  f = ShortcutFields(width=8, depth=1, batch_mul=3, consistency_draws=0, max_steps=8)
  dist = Shortcut(jnp.asarray(c, jnp.float32), head=_FakeHead, fields=f, channels=3)
  key = jax.random.key(4)
  loss, per_token = dist.loss(jnp.asarray(x, jnp.float32), key=key)
  kt, ke, _, _ = jax.random.split(key, 4)
  eps = np.asarray(jax.random.normal(ke, (3, 2, 5, 3)), np.float64)
  t = np.asarray(draw_times(kt, (3, 2, 5), f), np.float64)
  xt = t[..., None] * x + (1 - t[..., None]) * eps
  s = _np_step(xt, t, np.zeros_like(t), c)   # d = 0: the flow velocity.
  want = ((s - (x - eps)) ** 2).mean(-1).mean(0)
  np.testing.assert_allclose(np.asarray(per_token), want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-4)


def test_consistency_draws_follow_the_dyadic_grid():
  rng = np.random.default_rng(2)
  x, c = rng.normal(size=(4, 6, 2)), rng.normal(size=(4, 6, 2))
  m = 8
  f = ShortcutFields(width=8, depth=1, batch_mul=2, consistency_draws=2, max_steps=m)
  dist = Shortcut(jnp.asarray(c, jnp.float32), head=_FakeHead, fields=f, channels=2)
  key = jax.random.key(9)
  _, per_token = dist.loss(jnp.asarray(x, jnp.float32), key=key)
  _, ke, kj, ki = jax.random.split(key, 4)
  eps = np.asarray(jax.random.normal(ke, (2, 4, 6, 2)), np.float64)
  j = np.asarray(jax.random.randint(kj, (2, 4, 6), 0, 3))
  big = 2.0 ** -j
  i = np.floor(np.asarray(jax.random.uniform(ki, (2, 4, 6)), np.float64) * 2.0 ** j)
  t = i * big
  assert set(np.unique(j)) == {0, 1, 2} and (t + big <= 1).all()
  d = big / 2
  net_d = lambda dd: np.where(dd * m <= 1, 0.0, dd)   # the finest step is the flow network.
  xt = t[..., None] * x + (1 - t[..., None]) * eps
  s1 = _np_step(xt, t, net_d(d), c)
  s2 = _np_step(xt + d[..., None] * s1, t + d, net_d(d), c)
  want = ((_np_step(xt, t, net_d(big), c) - (s1 + s2) / 2) ** 2).mean(-1).mean(0)
  np.testing.assert_allclose(np.asarray(per_token), want, rtol=1e-4, atol=1e-5)


def test_one_step_of_size_one_is_exact_on_a_linear_field():
  rng = np.random.default_rng(3)
  c_c = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)
  c_u = jnp.asarray(rng.normal(size=(3, 2, 4)), jnp.float32)

  class PointMass:  # average velocity over [t, t + d] toward c from x: (c - x) / (1 - t).
    @staticmethod
    def step(x, t, d, c):
      return (c - x) / (1.0 - jnp.asarray(t)[..., None])

  f = ShortcutFields(width=8, depth=1, max_steps=8, num_sampling_steps=1)
  cond = Shortcut(c_c, head=PointMass, fields=f, channels=4)
  unc = Shortcut(c_u, head=PointMass, fields=f, channels=4)
  np.testing.assert_allclose(np.asarray(cond.sample(jax.random.key(0))), c_c, atol=1e-5)
  guided = np.asarray(cond.guide(unc, 2.5).sample(jax.random.key(0)))
  np.testing.assert_allclose(guided, c_u + 2.5 * (c_c - c_u), atol=1e-4)
  # A field constant in x: S Euler steps of size 1 / S integrate it exactly too.
  x0 = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  out = shortcut_integrate(lambda x, t, d: jnp.ones_like(x) * (1 + 0 * t), x0, 4)
  np.testing.assert_allclose(np.asarray(out), np.asarray(x0) + 1, atol=1e-6)


@pytest.fixture(scope="module")
def trained():
  return ring.load("shortcut")


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_trained_head_samples_the_ring_in_few_steps(trained, steps):
  """2000 samples at seed 0 against 2000 ring draws at seed 1 (seen: energy distance 1 step
  0.0059, 2 steps 0.0056, 4 steps 0.0052; mode spread 0.20 / 0.20 / 0.19 against the true 0.15,
  1.1 % / 1.0 % / 0.8 % off-mode). Tolerances: energy distance < 0.008 (baselines at 2000 draws:
  another ring set 0.0011, a uniform circle without modes 0.0082, N(0, I) 0.066), every mode
  0.125 +- 0.04, < 3 % off-mode, spread < 0.25 (a few-step head is wider than the 50-step flow
  head's)."""
  trained.fields = ShortcutFields(**{**ring.SHORTCUT.__dict__, "num_sampling_steps": steps})
  x = ring.sample(trained, 2000)
  ed = ring.energy_distance(x, ring.ring_samples(np.random.default_rng(1), 2000))
  frac, spread, off = ring.mode_stats(x)
  assert ed < 0.008, ed
  assert np.abs(frac - 0.125).max() < 0.04, frac
  assert off < 0.03, off
  assert spread < 0.25, spread


@pytest.mark.parametrize("field,value,match", [
    ("num_sampling_steps", 3, r"model.head.num_sampling_steps=3; expected a power of two in "
                              r"\[1, max_steps=8\]"),
    ("num_sampling_steps", 16, r"model.head.num_sampling_steps=16; expected a power of two"),
    ("max_steps", 12, r"model.head.max_steps=12; expected a power of two"),
    ("consistency_draws", 5, r"model.head.consistency_draws=5; expected an integer in \[0, "
                             r"batch_mul=4\]"),
])
def test_bad_step_counts_name_the_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    ShortcutFields(**{"max_steps": 8, field: value})
