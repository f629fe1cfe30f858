"""Hi-MAR (arjax/models/himar.py), its global diffusion head (arjax/heads/global_diffusion.py)
and the 'himar' two-phase sampler (arjax/sampling/two_phase.py), on a tiny model (4x4 grid of
one-channel tokens, 2x2 pivots, width 16) with randomised weights.

- Pivots: the area average against a float64 numpy transcription.
- Phase 2 ignores the values of masked grid tokens (MAR's property) and depends on the pivots.
- Training masks against a transcription of the official per-phase rules (same keys).
- The jitted sampler equals a naive eager transcription of the official loop (same keys).
- CFG at scale 1 of the global head equals the conditional head.
- Bad input (a pivot grid not dividing the token grid) names model.pivot_grid.
(The paper-size parameter counts are checked in tests/test_configs.py.)
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel
from arjax.models import build_model
from arjax.sampling import SamplingConfig, build_sampler

SMOKE = "configs/imagenet256/himar.py:smoke"
TINY = ["tokenizer.resolution=4", "model.pivot_grid=2", "model.backbone.dim=16",
        "model.head.width=16", "model.global_head.width=16", "model.pivot_steps=2",
        "model.grid_steps=2", "model.head.num_sampling_steps=2",
        "model.global_head.num_sampling_steps=3"]


def _randomise(model, seed=0):
  """Every parameter to N(0, 0.3^2): zero-initialised gates would hide the dependencies."""
  from flax import nnx
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [0.3 * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, new))
  return model


@pytest.fixture(scope="module")
def setup():
  config = load_config(SMOKE, TINY)
  model = _randomise(build_model(config))
  return config, model


# Jitted pieces (one compile each, shared across tests): eager dispatch of the tiny model's
# many small ops costs more than compiling them.
from flax import nnx  # noqa: E402

phase1 = nnx.jit(lambda m, *a: m.phase1(*a))
phase2 = nnx.jit(lambda m, *a: m.phase2(*a))


@nnx.jit
def pivot_draw(m, z, scale, key):
  b = z.shape[0] // 2
  return m.head(z[:b]).guide(m.head(z[b:]), scale).sample(key)


@nnx.jit
def grid_draw(m, z, scale, key, known, known_mask):
  b = z.shape[0] // 2
  return m.global_head(z[:b]).guide(m.global_head(z[b:]), scale).sample(
      key, known=known, known_mask=known_mask)


def test_pivots_are_the_block_average(setup):
  from arjax.models.himar import pivots_from_grid
  x = np.random.default_rng(0).normal(size=(2, 16, 3))
  want = np.zeros((2, 4, 3))
  for i in range(2):
    for j in range(2):
      block = x.reshape(2, 4, 4, 3)[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
      want[:, 2 * i + j] = block.reshape(2, 4, 3).mean(1)
  got = pivots_from_grid(jnp.asarray(x, jnp.float32), (4, 4), 2)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)


def test_phase2_ignores_masked_tokens_and_depends_on_pivots(setup):
  _, model = setup
  rng = np.random.default_rng(1)
  b, n, np_ = 2, model.num_tokens, model.num_pivots
  tokens = jnp.asarray(rng.normal(size=(b, n, 1)), jnp.float32)
  known = jnp.asarray(rng.random((b, n)) < 0.5)
  labels = jnp.array([1, 3], jnp.int32)
  slots = jnp.asarray(rng.normal(size=(b, np_, 16)), jnp.float32)
  z = phase2(model, slots, tokens, labels, known)
  other = jnp.where(known[..., None], tokens, 100.0 + tokens)
  np.testing.assert_allclose(np.asarray(phase2(model, slots, other, labels, known)),
                             np.asarray(z), rtol=1e-5, atol=1e-5)
  moved = phase2(model, slots.at[:, 0].add(jnp.asarray(rng.normal(size=16), jnp.float32)),
                       tokens, labels, known)
  assert float(jnp.abs(moved - z).max()) > 1e-3
  # Phase 1 ignores the grid entirely and masked pivots' values.
  piv = jnp.asarray(rng.normal(size=(b, np_, 1)), jnp.float32)
  pk = jnp.array([[True, False, True, False], [False, False, True, True]])
  z1 = phase1(model, piv, labels, pk)
  np.testing.assert_allclose(np.asarray(phase1(model, jnp.where(pk[..., None], piv, -7.0),
                                               labels, pk)), np.asarray(z1),
                             rtol=1e-5, atol=1e-5)


def test_training_masks_follow_the_official_rules(setup):
  _, model = setup
  b, n, np_ = 3, model.num_tokens, model.num_pivots
  for seed in range(5):
    key = jax.random.key(seed)
    m1, m2 = model.train_masks(key, b)
    k1, k2, _, _ = jax.random.split(key, 4)
    lo, sd = 0.7, 0.25
    r1 = float(1.0 + sd * jax.random.truncated_normal(k1, (lo - 1.0) / sd, 0.0, ()))
    r2 = math.cos(float(jax.random.uniform(k2, ())) * math.pi / 2)
    assert 0.7 <= r1 <= 1.0
    assert (np.asarray(m1).sum(1) == math.ceil(np_ * np.float32(r1))).all()
    assert (np.asarray(m2).sum(1) == math.ceil(n * np.float32(r2))).all()


def test_loss_is_the_weighted_sum_of_the_phases(setup):
  config, model = setup
  rng = np.random.default_rng(2)
  batch = {"latents": jnp.asarray(rng.normal(size=(2, 16, 1)), jnp.float32),
           "label": jnp.array([0, 5], jnp.int32)}
  loss, m = nnx.jit(lambda mod, bt: mod.loss(bt, train=False))(model, batch)
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), 2.0 * float(m["pivot_loss"])
                             + 0.75 * float(m["grid_loss"]), rtol=1e-6)


def naive_counts(n, k):
  out, masked = [], n
  for step in range(k):
    m = max(1, min(masked - 1, int(np.floor(n * np.cos(np.pi / 2 * (step + 1) / k)))))
    m = 0 if step == k - 1 else m
    out.append(m)
    masked = m
  return out


def naive_sample(model, labels, rng, w, w1):
  """An eager transcription of the official sample_tokens loop (no jit)."""
  b = labels.shape[0]
  np_, n = model.num_pivots, model.num_tokens
  null = jnp.full((b,), model.null_class, jnp.int32)
  order = np.argsort(np.asarray(jax.random.uniform(jax.random.fold_in(rng, 100), (b, np_))), 1)
  pivots = np.zeros((b, np_, 1), np.float32)
  mask = np.ones((b, np_), bool)
  z1 = np.zeros((b, np_, model.dec_dim), np.float32)
  for k, m in enumerate(naive_counts(np_, model.fields.pivot_steps)):
    nxt = np.zeros((b, np_), bool)
    for r in range(b):
      nxt[r, order[r, :m]] = True
    pred = mask & ~nxt
    z = phase1(model, jnp.asarray(np.concatenate([pivots, pivots])),
               jnp.concatenate([labels, null]), jnp.asarray(np.concatenate([~mask, ~mask])))
    draw = np.asarray(pivot_draw(model, z, jnp.float32(1 + (w1 - 1) * (np_ - m) / np_),
                                 jax.random.fold_in(rng, k)))
    pivots[pred] = draw[pred]
    z1[pred] = np.asarray(z[:b])[pred]
    mask = nxt
  slots = model.pivot_z_slots(jnp.asarray(z1))
  order = np.argsort(np.asarray(jax.random.uniform(jax.random.fold_in(rng, 101), (b, n))), 1)
  tokens = np.zeros((b, n, 1), np.float32)
  mask = np.ones((b, n), bool)
  for k, m in enumerate(naive_counts(n, model.fields.grid_steps)):
    nxt = np.zeros((b, n), bool)
    for r in range(b):
      nxt[r, order[r, :m]] = True
    pred = mask & ~nxt
    z = phase2(model, jnp.concatenate([slots, slots]),
               jnp.asarray(np.concatenate([tokens, tokens])), jnp.concatenate([labels, null]),
               jnp.asarray(np.concatenate([~mask, ~mask])))
    draw = np.asarray(grid_draw(model, z, jnp.float32(1 + (w - 1) * (n - m) / n),
                                jax.random.fold_in(rng, 1000 + k), jnp.asarray(tokens),
                                jnp.asarray(~mask)))
    tokens[pred] = draw[pred]
    mask = nxt
  return pivots, tokens


def test_compiled_sampler_equals_naive_loop(setup):
  config, model = setup
  graphdef, params = nnx.split(model)
  labels = jnp.array([2, 7], jnp.int32)
  key = jax.random.key(3)
  from arjax.sampling.two_phase import two_phase_sample

  @jax.jit
  def run(params, labels, key):
    return two_phase_sample(nnx.merge(graphdef, params), labels, key, 2.0, 1.0)

  piv, tok = run(params, labels, key)
  w1 = model.fields.pivot_cfg
  npiv, ntok = naive_sample(model, labels, key, 2.0, w1)
  np.testing.assert_allclose(np.asarray(piv), npiv, rtol=2e-4, atol=2e-4)
  np.testing.assert_allclose(np.asarray(tok), ntok, rtol=2e-4, atol=2e-4)
  assert np.isfinite(ntok).all() and np.abs(ntok).sum() > 0


def test_cfg_at_scale_one_is_the_conditional_head(setup):
  _, model = setup
  rng = np.random.default_rng(4)
  z = jnp.asarray(rng.normal(size=(2, 16, 16)), jnp.float32)
  zu = jnp.asarray(rng.normal(size=(2, 16, 16)), jnp.float32)
  known = jnp.asarray(rng.random((2, 16)) < 0.5)
  tokens = jnp.asarray(rng.normal(size=(2, 16, 1)), jnp.float32)
  key = jax.random.key(5)
  cond = nnx.jit(lambda m, z, k, t, kn: m.global_head(z).sample(k, known=t, known_mask=kn))(
      model, z, key, tokens, known)
  guided = grid_draw(model, jnp.concatenate([z, zu]), jnp.float32(1.0), key, tokens, known)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(cond), rtol=1e-4, atol=1e-4)
  other = grid_draw(model, jnp.concatenate([z, zu]), jnp.float32(3.0), key, tokens, known)
  assert float(jnp.abs(other - cond).max()) > 1e-3


def test_pivot_grid_must_divide_the_token_grid():
  config = load_config(SMOKE, TINY[:1] + ["model.pivot_grid=3"] + TINY[2:])
  with pytest.raises(ValueError, match=r"model.pivot_grid=3 does not divide the token grid 4x4"):
    build_model(config)


def test_a_constant_cfg_schedule_with_guidance_is_refused(setup):
  """The loop only ramps CFG linearly: 'constant' at scale > 1 must not run silently as linear."""
  from arjax.sampling.guidance_schedule import GuidanceSchedule
  config, _ = setup
  fm = FunctionalModel.abstract(lambda: build_model(config))
  with pytest.raises(ValueError, match=r"eval.cfg_schedule='constant' is not supported with "
                                       r"eval.cfg_scale=2.0"):
    build_sampler(fm, SamplingConfig(cfg_scale=2.0, name="himar"),
                  guidance=GuidanceSchedule("constant", 2.0))
  build_sampler(fm, SamplingConfig(cfg_scale=1.0, name="himar"),
                guidance=GuidanceSchedule("constant", 1.0))  # no guidance: accepted.
  build_sampler(fm, SamplingConfig(cfg_scale=2.0, name="himar"),
                guidance=GuidanceSchedule("linear", 2.0))
