"""FlowAR (arjax.models.flowar) and the continuous path of the 'next_scale' sampler, on the
smoke config (continuous 14x14 MNIST pixels, scales 1,2,4,7,14, width 32, a 1-block head).

- causality: changing the inputs and noised latents of scales > k never changes the velocity
  predicted for scales <= k (one block-causal AR pass, block-diagonal head attention);
- the KV-cached sampler (CFG on the velocity, Euler) equals a naive loop that recomputes the
  whole uncached network scale by scale (1e-5, float32); at cfg_scale 1 it equals the naive
  conditional-only loop;
- one spatial-adaLN block (modulation and output) against a float64 numpy transcription;
- the training loss: the area pyramid and V = s - F0 against numpy;
- Euler is exact on the straight-path velocity field, Heun on a velocity linear in time;
- bad configs name the field (scale list not ending at the grid; a discrete tokenizer: both
  the model and the tokenizer; another head).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.core.functional import FunctionalModel
from arjax.heads.flow import integrate
from arjax.models import build_model
from arjax.sampling import SamplingConfig, build_sampler

SMOKE = "configs/imagenet256/flowar.py:smoke"
B = 2


@pytest.fixture(scope="module")
def smoke():
  config = load_config(SMOKE)
  fm = FunctionalModel.abstract(lambda: build_model(config))
  # Random weights everywhere, drawn in numpy from the abstract shapes (no eager init).
  rs = np.random.default_rng(7)
  params = jax.tree.map(lambda x: jnp.asarray((0.2 * rs.standard_normal(x.shape))
                                              .astype(np.float32)), fm.abstract_params)

  def run(p, inputs, labels, x_t, t_slots):
    m = fm.bind(p)
    return m.velocity(x_t, t_slots, m.features(inputs, labels))

  model = fm.bind(params)
  return dict(config=config, fm=fm, params=params, model=model, run=jax.jit(run),
              order=model.order)


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_smoke_layout(smoke):
  m = smoke["model"]
  assert m.scales == (1, 2, 4, 7, 14) and m.num_slots == 266 and m.channels == 1
  assert m.order.bounds[-1] == (70, 266)


def test_later_scales_never_change_earlier_velocities(smoke):
  run, params, order = smoke["run"], smoke["params"], smoke["order"]
  n, first = order.num_tokens, order.bounds[0][1]
  labels = jnp.array([3, 5])
  inputs, x_t = _rand((B, n - first, 1), 0), _rand((B, n, 1), 1)
  t = jnp.asarray(np.random.default_rng(2).uniform(size=(B, n)).astype(np.float32))
  base = np.asarray(run(params, inputs, labels, x_t, t))
  for k in range(order.num_scales - 1):
    a = order.bounds[k + 1][0]  # slots of scales > k
    inp2 = inputs.at[:, a - first:].add(_rand((B, n - a, 1), 10 + k))
    x2 = x_t.at[:, a:].add(_rand((B, n - a, 1), 20 + k))
    t2 = t.at[:, a:].set(0.5)
    out = np.asarray(run(params, inp2, labels, x2, t2))
    np.testing.assert_allclose(out[:, :a], base[:, :a], atol=1e-6, rtol=0)
    assert np.abs(out[:, a:] - base[:, a:]).max() > 1e-3  # the change does reach later scales


def naive_sample(smoke, labels, rng, w, steps, given=None):
  """Scale by scale, recomputing the whole uncached network (features of every slot with the
  inputs drawn so far, zeros after) at every Euler step; CFG v_u + w (v_c - v_u) (w None: the
  conditional velocity only). given [B, N, 1]: build scale k + 1's input from given's scale k
  instead of the naive draw (one scale's ODE compared at a time: no float32 drift compounding
  through later scales)."""
  run, params, order, m = smoke["run"], smoke["params"], smoke["order"], smoke["model"]
  n, first = order.num_tokens, order.bounds[0][1]
  inputs = jnp.zeros((B, n - first, 1))
  null = jnp.full((B,), m.null_class)
  maps = []
  for k, s in enumerate(order.scales):
    a, e = order.bounds[k]
    x = jax.random.normal(jax.random.fold_in(rng, k), (B, s * s, 1), jnp.float32)
    for i in range(steps):
      tt = i / steps
      x_all = jnp.zeros((B, n, 1)).at[:, a:e].set(x)
      t_all = jnp.full((B, n), tt, jnp.float32)
      v_c = run(params, inputs, labels, x_all, t_all)[:, a:e]
      v = v_c
      if w is not None:
        v_u = run(params, inputs, null, x_all, t_all)[:, a:e]
        v = v_u + w * (v_c - v_u)
      x = x + v / steps
    maps.append(x)
    if k + 1 < order.num_scales:
      b0, b1 = order.bounds[k + 1]
      src = x if given is None else jnp.asarray(given[:, a:e])
      inputs = inputs.at[:, b0 - first:b1 - first].set(m.next_input(src, k))
  return np.asarray(maps[-1]), np.asarray(jnp.concatenate(maps, 1))


@pytest.mark.parametrize("cfg", [2.0, 1.0])
def test_cached_sampler_equals_naive_recompute(smoke, cfg):
  fm, params, config = smoke["fm"], smoke["params"], smoke["config"]
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=cfg), config)
  assert sampler.name == "next_scale"
  labels, rng = jnp.array([1, 7]), jax.random.key(3)
  final, every = sampler.sample_with_fhat(params, labels, rng)
  assert final.shape == (B, 196, 1) and every.shape == (B, 266, 1)
  steps = config.model.head.num_sampling_steps
  w = cfg if cfg != 1.0 else None
  every = np.asarray(every)
  # Scale by scale from the same earlier scales: 1e-5.
  _, ref_every = naive_sample(smoke, labels, rng, w, steps, given=every)
  np.testing.assert_allclose(every, ref_every, atol=1e-5, rtol=1e-5)
  # (Free-running, the naive chain's own draws as inputs, float32 differences between attention
  # over a cache and over the full sequence pass through 5 scales of upsampling and CFG: up to
  # 1.7e-5 measured; the per-scale comparison above is the 1e-5 check.)
  np.testing.assert_array_equal(np.asarray(final), every[:, -196:])
  tokens = sampler.sample_tokens(params, labels, rng)
  np.testing.assert_array_equal(np.asarray(tokens), np.asarray(final))


def _ln(x, eps):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_spatial_adaln_block_against_numpy(smoke):
  from arjax.kernels.masks import MaskSpec
  m = smoke["model"]
  blk = m.head.blocks[0]
  l, dh, c = 16, blk.dh, m.width
  x, cond = _rand((B, l, dh), 30), _rand((B, l, c), 31)
  mask = MaskSpec(kind="bidirectional", kv_length=jnp.full((1,), l, jnp.int32))
  got_mod = [np.asarray(a) for a in blk.modulation(cond)]
  got = np.asarray(blk(x, cond, mask))
  f = lambda p: np.asarray(p[...], np.float64)
  xd, cd = np.asarray(x, np.float64), np.asarray(cond, np.float64)
  silu = cd / (1 + np.exp(-cd))
  ada = (silu @ f(blk.ada.kernel) + f(blk.ada.bias)).reshape(B, l, 6, dh)
  a1, a2, b1, b2, g1, g2 = [ada[:, :, i] for i in range(6)]
  for g_, r_ in zip(got_mod, (a1, a2, b1, b2, g1, g2)):
    np.testing.assert_allclose(g_, r_, atol=1e-5, rtol=1e-5)
  # position-wise: each slot's modulation depends on its own condition only.
  assert np.abs(a1[:, 0] - a1[:, 1]).max() > 1e-3
  h = _ln(xd, m.norm_eps) * (1 + g1) + b1
  qkv = (h @ f(blk.qkv.kernel) + f(blk.qkv.bias)).reshape(B, l, 3, blk.heads, dh // blk.heads)
  q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dh // blk.heads)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  att = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(B, l, dh)
  xd = xd + a1 * (att @ f(blk.proj.kernel) + f(blk.proj.bias))
  h = _ln(xd, m.norm_eps) * (1 + g2) + b2
  mlp = _gelu_tanh(h @ f(blk.fc1.kernel) + f(blk.fc1.bias)) @ f(blk.fc2.kernel) + f(blk.fc2.bias)
  np.testing.assert_allclose(got, xd + a2 * mlp, atol=1e-4, rtol=1e-4)


def _area(x, s):
  """float64 [B, H, W, C] -> [B, s, s, C]: adaptive average pooling (PyTorch 'area')."""
  h = x.shape[1]
  out = np.zeros((x.shape[0], s, s, x.shape[3]))
  for i in range(s):
    r0, r1 = (i * h) // s, -((-(i + 1) * h) // s)
    for j in range(s):
      c0, c1 = (j * h) // s, -((-(j + 1) * h) // s)
      out[:, i, j] = x[:, r0:r1, c0:c1].mean((1, 2))
  return out


def test_flow_loss_target_against_numpy(smoke):
  from arjax.heads.flow import draw_times
  m, run, params, order = smoke["model"], smoke["run"], smoke["params"], smoke["order"]
  tokens = _rand((B, 196, 1), 40)
  labels = jnp.array([2, 9])
  lat = np.asarray(tokens, np.float64).reshape(B, 14, 14, 1)
  ref_targets = np.concatenate([_area(lat, s).reshape(B, -1, 1) for s in order.scales], 1)
  inputs, targets = m.teacher(tokens)
  np.testing.assert_allclose(np.asarray(targets), ref_targets, atol=1e-6, rtol=0)
  fm = smoke["fm"]
  loss = jax.jit(lambda p, bt: fm.bind(p).loss(bt, train=False)[0])(
      params, {"tokens": tokens, "label": labels})
  kt, ke = jax.random.split(jax.random.key(0))  # the evaluation keys of FlowAR.loss.
  t = np.asarray(draw_times(kt, (B, order.num_scales), m.flow), np.float64)
  noise = np.asarray(jax.random.normal(ke, (B, order.num_tokens, 1)), np.float64)
  t_slots = t[:, order.level_ids_np]
  x_t = t_slots[..., None] * ref_targets + (1 - t_slots[..., None]) * noise
  v = np.asarray(run(params, inputs, labels, jnp.asarray(x_t, jnp.float32),
                     jnp.asarray(t_slots, jnp.float32)), np.float64)
  ref = np.mean((v - (ref_targets - noise)) ** 2)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_heun_exact_on_a_velocity_linear_in_time():
  # v = a + b t: x(1) = x0 + a + b / 2; the trapezoid rule is exact for it, Euler is not.
  x0, a, bb = jnp.array([[0.1, -0.4]]), jnp.array([[0.3, 1.1]]), jnp.array([[2.0, -0.6]])
  vel = lambda x, t: a + bb * t
  exact = np.asarray(x0 + a + bb / 2, np.float64)
  np.testing.assert_allclose(np.asarray(integrate(vel, x0, 3, "heun")), exact, atol=1e-6)
  assert np.abs(np.asarray(integrate(vel, x0, 3, "euler")) - exact).max() > 0.1


def test_euler_exact_on_the_straight_path_field():
  # v(x, t) = (x1 - x) / (1 - t): the velocity of the straight path through x1; any step count
  # lands on x1 (float64 numpy reference of the same integration is x1 itself).
  x1 = np.array([[0.7, -1.3, 2.0]], np.float32)
  x0 = np.array([[0.1, 0.4, -0.5]], np.float32)
  vel = lambda x, t: (jnp.asarray(x1) - x) / (1.0 - t)
  out = np.asarray(integrate(vel, jnp.asarray(x0), 5, "euler"))
  np.testing.assert_allclose(out, x1, atol=1e-5)


@pytest.mark.parametrize("overrides,match", [
    (["order.scales=[1,2,4,7]"],
     r"order.scales=\[1, 2, 4, 7\]: the last side must be the tokenizer's grid 14"),
    (["tokenizer.continuous=False"],
     r"model 'flowar' \(continuous latents\) with tokenizer 'pixel'.*needs continuous tokens"),
    (["order.markovian=True"], r"order.markovian must be False"),
])
def test_bad_config_names_the_field(overrides, match):
  with pytest.raises(ValueError, match=match):
    config = load_config(SMOKE, overrides)
    FunctionalModel.abstract(lambda: build_model(config))


def test_another_head_is_refused_naming_the_field():
  import ml_collections
  config = load_config(SMOKE)
  config.model.head = ml_collections.ConfigDict({"name": "flow"})
  with pytest.raises(ValueError, match=r"model.head.name must be 'spatial_flow', got 'flow'"):
    FunctionalModel.abstract(lambda: build_model(config))


def test_spatial_flow_head_is_refused_by_other_models():
  import ml_collections
  config = load_config("configs/quickstart.py:smoke", ["tokenizer.continuous=True"])
  config.model.head = ml_collections.ConfigDict({"name": "spatial_flow"})
  with pytest.raises(ValueError, match=r"head 'spatial_flow' is FlowAR's per-scale head"):
    FunctionalModel.abstract(lambda: build_model(config))
