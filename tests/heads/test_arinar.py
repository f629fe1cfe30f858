"""ARINAR head (arjax/heads/arinar.py): feature-by-feature AR over a token's C features, a 1-D GMM
per feature, SIR guidance.

- The log-density against a naive float64 numpy transcription (every feature's GMM recomputed
  from its own prefix, the sequence cut after it, each row attending to the rows before it in a
  Python loop; the product of the 1-D GMM conditionals), on a 2-block head with randomised
  weights (rtol 2e-5).
- The density of a 2-feature head integrates to 1 by trapezoid quadrature on a 201 x 201 grid
  over [-12, 12]^2 (|1 - integral| < 1e-4; the test checks the grid covers every mean +- 8 sigma
  and resolves the narrowest sigma by > 2 grid steps).
- Causality: changing feature j changes no GMM of features <= j (bitwise) and does change j + 1.
- The cached sampler (lax.scan with a key/value cache) at temperature 0 lands on the
  teacher-forced greedy features, and every GMM parameter it sees equals the teacher-forced
  one for the same prefix; sampling with a fixed key is deterministic, of shape
  [B, L, C] float32; feature 0's draws follow its GMM (KS test, 4000 draws, p > 1e-3).
- SIR guidance: at scale 1 the guided sampler's draws and the plain sampler's have the same
  distribution (two-sample KS per feature, 3000 draws each, p > 1e-3, seed 0), while at scale 3
  they differ (p < 1e-6); `sir_draw` on Gaussian conditionals against the closed-form guided
  Gaussian N_c^s / N_u^(s-1) (5000 draws, M = 500, seed 0; mean within 5 SE + 0.01, variance
  within 15 % = 6 SE of a sample variance).
- The ARINAR-B config has the official code's 212,949,516 parameters (head 12,423,180).
- The head plugs into MAR and the causal AR by config (`model.head.name='arinar'`): both
  models' losses and guided samplers (CFG 2, SIR in the head) trace with the right shapes
  (jax.eval_shape: compiling them is over this file's budget; the smoke runs of
  configs/imagenet256/arinar.py train and sample it).
- Bad fields, temperatures and targets fail naming them.
"""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from scipy.special import logsumexp

from arjax.heads.arinar import ARINARFields, ARINARHead, gmm_log_prob, sir_draw

D = 8


def make_head(channels, depth, seed, scale=0.5):
  """A head with random weights (the official init makes the gammas ~0 and the outputs tiny):
  built from shapes alone, every parameter drawn by numpy (no per-shape JAX compiles)."""
  tok = types.SimpleNamespace(token_dim=channels, vocab_size=0)
  fields = ARINARFields(num_components=3, width=16, depth=depth, num_heads=2, cfg_proposals=64)
  head = nnx.eval_shape(lambda: ARINARHead(D, tok, fields, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  leaves, tree = jax.tree.flatten(nnx.state(head, nnx.Param))
  new = [jnp.asarray(scale * rng.standard_normal(x.shape) /
                     (math.sqrt(x.shape[0]) if len(x.shape) == 2 else 1.0), jnp.float32)
         for x in leaves]
  nnx.update(head, jax.tree.unflatten(tree, new))
  return head


@pytest.fixture(scope="module")
def head3():
  return make_head(3, depth=2, seed=0)


@pytest.fixture(scope="module")
def fns(head3):
  """The jitted calls the tests share, all at z [2, L, D], x [2, L, 3] (L = 1500): one compile
  each (teacher forcing; sampling at t = 1 and t = 0; guided sampling)."""
  def teacher(z, x):
    d = head3(z)
    return d.log_prob(x), d.loss(x), d.feature_params(x)

  guided = lambda zc, zu, s, k: head3(zc).guide(head3(zu), s).sample(k)
  return dict(teacher=jax.jit(teacher),
              sample=jax.jit(lambda z, k, t: head3(z).sample(k, temperature=t),
                             static_argnums=2),
              guided=jax.jit(guided))


L = 1500


def rand(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# -- naive float64 numpy reference ---------------------------------------------------------------
def _np(p):
  return np.asarray(p[...], np.float64)


def _ln(x):
  m = x.mean(-1, keepdims=True)
  return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-6)


def _silu(a):
  return a / (1 + np.exp(-a))


def _gelu_tanh(a):
  return 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))


def _dense(layer, x):
  return x @ _np(layer.kernel) + _np(layer.bias)


def naive_log_prob(head, z, x):
  """z [D], x [C] -> log p(x | z) = sum_j log GMM_j(x_j), GMM_j computed from the prefix
  x_<j alone (the sequence cut after position j, then row by row attention to earlier rows)."""
  net = head.net
  c = x.shape[0]
  inputs = [_dense(net.cond_proj, z) + _np(net.start_token)]
  inputs += [_dense(net.input_proj, x[j - 1:j]) for j in range(1, c)]
  h_all = np.stack(inputs) + _np(net.pos_embedding)[:c]
  total = 0.0
  for j in range(c):
    h = h_all[:j + 1]
    for blk in net.blocks:
      g1, g2, s1, s2, b1, b2 = np.split(_dense(blk.ada, _silu(z)), 6)
      a = _ln(h) * (1 + s1) + b1
      q, k, v = np.split(a @ _np(blk.qkv.kernel), 3, axis=-1)
      q, v = q + _np(blk.q_bias), v + _np(blk.v_bias)
      nh = blk.num_heads
      e = q.shape[-1] // nh
      out = np.zeros_like(q)
      for i in range(j + 1):              # row i attends to rows <= i, one row at a time.
        for hh in range(nh):
          sl = slice(hh * e, (hh + 1) * e)
          s = k[:i + 1, sl] @ q[i, sl] * (0.25 / math.sqrt(e))
          w = np.exp(s - s.max())
          out[i, sl] = (w / w.sum()) @ v[:i + 1, sl]
      h = h + g1 * _dense(blk.proj, out)
      f = _dense(blk.fc2, _gelu_tanh(_dense(blk.fc1, _ln(h) * (1 + s2) + b2)))
      h = h + g2 * f
    scale, shift = np.split(_dense(net.head_ada, _silu(z)), 2)
    o = _dense(net.out, _ln(h[-1]) * (1 + scale) + shift)
    means, logvars, logits = np.split(o, 3)
    logw = logits - logsumexp(logits)
    comp = -0.5 * ((x[j] - means) ** 2 / np.exp(logvars) + logvars + math.log(2 * math.pi))
    total += logsumexp(logw + comp)
  return total


def test_log_density_matches_naive_float64(head3, fns):
  z, x = rand(1, (2, L, D)), rand(2, (2, L, 3))
  lp, (loss, per_token), _ = fns["teacher"](z, x)
  z, x = np.asarray(z, np.float64), np.asarray(x, np.float64)
  ref = np.array([[naive_log_prob(head3, z[b, l], x[b, l]) for l in range(5)] for b in range(2)])
  assert np.abs(ref).max() > 1.0
  np.testing.assert_allclose(np.asarray(lp)[:, :5], ref, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(np.asarray(per_token)[:, :5], -ref, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(float(loss), -np.asarray(lp).mean(), rtol=1e-6)


def test_density_integrates_to_one_on_two_features():
  head = make_head(2, depth=1, seed=3)
  z = jnp.asarray(np.random.default_rng(4).standard_normal((1, 1, D)), jnp.float32)
  g = np.linspace(-12.0, 12.0, 201)
  step = g[1] - g[0]
  x = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(1, -1, 2).astype(np.float32)

  @jax.jit
  def density(x):
    d = head(jnp.broadcast_to(z, (1, x.shape[1], D)))
    return d.log_prob(x), d.feature_params(x)

  lp, (_, means, logvars) = density(jnp.asarray(x))
  sig = np.exp(0.5 * np.asarray(logvars))
  # The grid covers every component's mean +- 8 sigma and resolves its sigma by > 2 steps
  # (the trapezoid rule's error on a Gaussian of sigma = 2 steps is below 1e-30).
  assert (np.abs(np.asarray(means)) + 8 * sig).max() < 12.0 and sig.min() > 2 * step
  dens = np.exp(np.asarray(lp, np.float64)).reshape(g.size, g.size)
  total = np.trapezoid(np.trapezoid(dens, g, axis=1), g)
  assert abs(total - 1.0) < 1e-4, total


def test_changing_feature_j_never_changes_earlier_conditionals(fns):
  z, x = rand(5, (2, L, D)), rand(6, (2, L, 3))
  base = [np.asarray(p) for p in fns["teacher"](z, x)[2]]
  for j in range(3):
    moved = [np.asarray(p) for p in fns["teacher"](z, x.at[..., j].add(1.7))[2]]
    for b, m in zip(base, moved):
      np.testing.assert_array_equal(b[:, :, :j + 1], m[:, :, :j + 1])
      if j + 1 < 3:
        assert np.abs(b[:, :, j + 1] - m[:, :, j + 1]).max() > 1e-4


def test_cached_sampler_matches_teacher_forcing_greedy(fns):
  z = rand(7, (2, L, D))
  x = fns["sample"](z, jax.random.key(0), 0.0)
  logits, means, _ = (np.asarray(p) for p in fns["teacher"](z, x)[2])
  greedy = np.take_along_axis(means, logits.argmax(-1)[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(x), greedy, rtol=1e-5, atol=1e-5)


def test_cached_sampler_sees_the_teacher_forced_gmms(head3):
  # Every feature's whole GMM (weights, means, log-variances), not just its greedy mean: the
  # cached sampler feeds x_j = f(GMM_j) for an injective-ish f of all 3K parameters, so the
  # teacher-forced GMMs of the fed features give back the same x (docs/continuous.md, ARINAR).
  net = head3.net
  z = rand(11, (64, D))
  f = lambda p: (jax.nn.softmax(p[0], -1) * p[1]).sum(-1) + 0.1 * p[2].mean(-1) + \
      0.05 * p[0][..., 0]
  x = jax.jit(lambda z: net.autoregress(z, lambda k, p: f(p), jax.random.key(0)))(z)
  tf = jax.jit(net.teacher_forced)(z, x)
  assert float(jnp.abs(x).max()) > 0.1
  np.testing.assert_allclose(np.asarray(f(tf)), np.asarray(x), rtol=1e-5, atol=1e-5)


def test_sampling_is_deterministic_with_right_shape(fns):
  z = rand(8, (2, L, D))
  a = fns["sample"](z, jax.random.key(1), 1.0)
  assert a.shape == (2, L, 3) and a.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a), np.asarray(fns["sample"](z, jax.random.key(1),
                                                                        1.0)))
  assert not np.allclose(np.asarray(a), np.asarray(fns["sample"](z, jax.random.key(2), 1.0)))


@pytest.fixture(scope="module")
def draws(fns):
  """Plain and guided draws (scales 1, 3) of one token's distribution: 3000 each (seed 0)."""
  zc = jnp.broadcast_to(rand(9, (D,)), (2, L, D))
  zu = jnp.broadcast_to(rand(10, (D,)), (2, L, D))
  flat = lambda a: np.asarray(a).reshape(2 * L, 3)
  return dict(plain=flat(fns["sample"](zc, jax.random.key(0), 1.0)),
              s1=flat(fns["guided"](zc, zu, 1.0, jax.random.key(1))),
              s3=flat(fns["guided"](zc, zu, 3.0, jax.random.key(1))), zc=zc)


def test_first_feature_follows_its_gmm(fns, draws):
  logits, means, logvars = (np.asarray(p, np.float64)[0, 0, 0]
                            for p in fns["teacher"](draws["zc"], jnp.zeros((2, L, 3)))[2])
  w = np.exp(logits - logsumexp(logits))
  cdf = lambda v: (w * stats.norm.cdf((v[:, None] - means) / np.exp(0.5 * logvars))).sum(-1)
  assert stats.kstest(draws["plain"][:, 0], cdf).pvalue > 1e-3


def test_sir_guidance_at_scale_one_is_the_conditional(draws):
  for j in range(3):
    assert stats.ks_2samp(draws["s1"][:, j], draws["plain"][:, j]).pvalue > 1e-3
  assert min(stats.ks_2samp(draws["s3"][:, j], draws["plain"][:, j]).pvalue
             for j in range(3)) < 1e-6


def test_sir_draw_matches_the_guided_gaussian():
  n, s = 5000, 3.0
  mc, sc, mu, su = 0.5, 1.0, -0.5, 1.5
  full = lambda m, sd: (jnp.zeros((n, 1)), jnp.full((n, 1), m), jnp.full((n, 1),
                                                                        2 * math.log(sd)))
  x = np.asarray(jax.jit(lambda k: sir_draw(k, full(mc, sc), full(mu, su), jnp.full((n,), s),
                                            1.0, 500))(jax.random.key(0)), np.float64)
  prec = s / sc ** 2 - (s - 1) / su ** 2
  mean, var = (s * mc / sc ** 2 - (s - 1) * mu / su ** 2) / prec, 1 / prec
  assert abs(x.mean() - mean) < 5 * math.sqrt(var / n) + 0.01, (x.mean(), mean)
  assert abs(x.var() / var - 1) < 0.15, (x.var(), var)
  # The 1-D GMM log-density itself against scipy.
  v = jnp.linspace(-3, 3, 7)
  ref = np.log(0.3 * stats.norm.pdf(v, 1.0, 0.5) + 0.7 * stats.norm.pdf(v, -1.0, 2.0))
  ours = gmm_log_prob(v, jnp.log(jnp.array([0.3, 0.7])), jnp.array([1.0, -1.0]),
                      jnp.log(jnp.array([0.25, 4.0])))
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5)


def test_arinar_b_has_the_official_parameter_count():
  from arjax.config import load_config
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  fm = FunctionalModel.abstract(lambda: build_model(load_config("configs/imagenet256/arinar.py")))
  assert fm.param_count() == 212_949_516   # the official code's mar_base + ARHead_gmm(K=4, 768).


@pytest.mark.parametrize("spec", ["configs/imagenet256/arinar.py:smoke",
                                  "configs/continuous/causal.py:smoke,head=gmm"])
def test_plugs_into_mar_and_the_causal_ar(spec):
  from arjax.config import load_config
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  from arjax.sampling import SamplingConfig, build_sampler
  config = load_config(spec)
  config.model.head = dict(name="arinar", num_components=2, width=16, num_heads=2,
                           cfg_proposals=16)
  # Traced only (the head's own paths are checked above; compiling the models is over this
  # file's budget).
  fm = FunctionalModel.abstract(lambda: build_model(config))
  batch = {"latents": jax.ShapeDtypeStruct((2, 49, 1), jnp.float32),
           "label": jax.ShapeDtypeStruct((2,), jnp.int32)}
  loss, metrics = jax.eval_shape(lambda p, b: fm.bind(p).loss(b, train=False),
                                 fm.abstract_params, batch)
  assert loss.shape == () and metrics["nll"].dtype == jnp.float32
  # Each model's own sampler (MAR: 'order'; causal: KV-cached 'sequential'), guided: SIR in
  # the head at every step; traced too.
  sampler = build_sampler(fm, SamplingConfig(cfg_scale=2.0, temperature=1.0), config)
  out = jax.eval_shape(lambda p, k: sampler.sample_tokens(p, jnp.array([1, 2]), k),
                       fm.abstract_params, jax.random.key(1))
  assert out.shape == (2, 49, 1) and out.dtype == jnp.float32


@pytest.mark.parametrize("fields,match", [
    (dict(num_components=0), r"model.head.num_components=0; expected an integer >= 1"),
    (dict(width=10, num_heads=4), r"model.head.width=10 is not divisible by "
                                  r"model.head.num_heads=4"),
    (dict(cfg_proposals=-1), r"model.head.cfg_proposals=-1; expected an integer >= 1"),
    (dict(depth=1.5), r"model.head.depth=1.5; expected an integer >= 1"),
])
def test_bad_fields_name_the_field(fields, match):
  with pytest.raises(ValueError, match=match):
    ARINARFields(**fields)


def test_bad_temperature_and_targets(head3):
  dist = head3(jnp.zeros((1, 2, D)))
  with pytest.raises(ValueError, match=r"head 'arinar' samples at temperature >= 0.*"
                                       r"temperature=-1.0"):
    dist.sample(jax.random.key(0), temperature=-1.0)
  with pytest.raises(ValueError, match=r"head 'arinar' takes targets \[1, 2, 3\] of float32, "
                                       r"got \[1, 2, 4\] of float32"):
    dist.log_prob(jnp.zeros((1, 2, 4)))
  with pytest.raises(ValueError, match="continuous head and needs continuous tokens"):
    ARINARHead(D, types.SimpleNamespace(token_dim=0, vocab_size=16), rngs=nnx.Rngs(0))
