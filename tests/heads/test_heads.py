"""The head contract: GMM NLL against a float64 scipy mixture density, sampling moments against
the mixture's, GIVT's guided rejection sampler against the closed-form guided Gaussian,
categorical guidance and scores against numpy, and the bad-input messages."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from scipy.special import log_softmax, logsumexp

from arjax.heads import GMM, HEADS, Categorical, build_head
from arjax.heads.gmm import GMMFields, GMMHead, squareplus


class _Continuous:  # a tokenizer stand-in: C = 3 continuous channels.
  vocab_size, token_dim = 0, 3


class _Discrete:
  vocab_size, token_dim = 5, 0


def _random_gmm(seed, b=2, l=3, k=4, c=3):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(b, l, k)), rng.normal(size=(b, l, k, c)) * 2.0,
          np.exp(rng.normal(size=(b, l, k, c)) * 0.5), rng.normal(size=(b, l, c)) * 2.0)


def _scipy_log_prob(logits, means, scales, x):
  comp = stats.norm.logpdf(x[:, :, None], means, scales).sum(-1)          # [B, L, K]
  return logsumexp(log_softmax(logits, -1) + comp, axis=-1)


def test_gmm_nll_matches_a_float64_scipy_mixture_density():
  logits, means, scales, x = _random_gmm(0)
  dist = GMM(*(jnp.asarray(a, jnp.float32) for a in (logits, means, scales)))
  want = _scipy_log_prob(logits, means, scales, x)
  got = np.asarray(dist.log_prob(jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  w = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
  loss, nll = dist.loss(jnp.asarray(x, jnp.float32), weights=jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(nll), -want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(float(loss), (-want * w).sum() / w.sum(), rtol=1e-5)


def test_gmm_head_outputs_squareplus_scales_floored_and_scores_like_scipy():
  head = GMMHead(8, _Continuous(), GMMFields(num_components=4), rngs=nnx.Rngs(0))
  h = jax.random.normal(jax.random.key(1), (2, 3, 8)) * 50.0   # big inputs reach the floor.
  dist = head(h)
  raw = np.asarray(head.proj(h), np.float64)[..., 4:].reshape(2, 3, 4, 6)[..., 3:]
  want_scales = np.maximum((raw + np.sqrt(raw ** 2 + 4)) / 2, 1e-6)
  np.testing.assert_allclose(np.asarray(dist.scales), want_scales, rtol=1e-5, atol=1e-6)
  assert dist.means.shape == (2, 3, 4, 3) and head.token_shape == (3,)
  x = np.random.default_rng(2).normal(size=(2, 3, 3))
  want = _scipy_log_prob(np.asarray(dist.logits, np.float64), np.asarray(dist.means, np.float64),
                         np.asarray(dist.scales, np.float64), x)
  np.testing.assert_allclose(np.asarray(dist.log_prob(jnp.asarray(x, jnp.float32))), want,
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(squareplus(jnp.array([0.0]))), [1.0])


def _mixture_moments(logits, means, scales):
  p = np.exp(log_softmax(logits))[..., None]
  mean = (p * means).sum(-2)
  var = (p * (scales ** 2 + means ** 2)).sum(-2) - mean ** 2
  return mean, var


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_gmm_samples_have_the_mixture_moments(temperature):
  # One token's mixture repeated over S = 40000 rows; seed 0. Tolerance: 5 standard errors of
  # the sample mean (sd / sqrt(S)) and of the sample variance (var * sqrt(2 / S), plus the
  # kurtosis of a mixture: 6 var sqrt(2 / S) is generous and still 10x below the effect of a
  # wrong temperature).
  s = 40000
  logits = np.array([0.3, -1.0, 1.2])
  means = np.array([[-2.0, 0.5], [1.0, 3.0], [2.5, -1.0]])
  scales = np.array([[0.5, 1.0], [0.3, 0.2], [1.5, 0.7]])
  tile = lambda a: jnp.asarray(np.broadcast_to(a, (s, 1) + a.shape), jnp.float32)
  x = np.asarray(GMM(tile(logits), tile(means), tile(scales)).sample(
      jax.random.key(0), temperature=temperature))[:, 0]
  mean, var = _mixture_moments(logits, means, scales * temperature)
  assert x.shape == (s, 2) and x.dtype == np.float32
  assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / s))
  assert np.all(np.abs(x.var(0) - var) < 6 * var * np.sqrt(2 / s))
  other = _mixture_moments(logits, means, scales * (1.5 - temperature))[1]
  assert np.all(np.abs(other - var) > 6 * var * np.sqrt(2 / s))  # the test tells them apart.


def test_guided_gmm_rejection_sampler_is_exact_for_a_normalisable_guided_density():
  # One component: N_c^(1+w) / N_u^w is the Gaussian of precision (1+w)/sc^2 - w/su^2.
  s, w = 40000, 1.5
  mc, sc, mu, su = 1.0, 0.8, -0.5, 1.6
  one = lambda m, sd: GMM(jnp.zeros((s, 1, 1)), jnp.full((s, 1, 1, 1), m),
                          jnp.full((s, 1, 1, 1), sd), proposals=200)
  guided = one(mc, sc).guide(one(mu, su), 1.0 + w)
  x, ok = guided.sample_with_acceptance(jax.random.key(3), temperature=1.0)
  x, ok = np.asarray(x)[:, 0, 0], np.asarray(ok)
  prec = (1 + w) / sc ** 2 - w / su ** 2
  mean = ((1 + w) * mc / sc ** 2 - w * mu / su ** 2) / prec
  var = 1.0 / prec
  assert ok.mean() > 0.999   # 200 proposals: a failure would fall back to the conditional.
  assert abs(x.mean() - mean) < 5 * np.sqrt(var / s)
  assert abs(x.var() - var) < 5 * var * np.sqrt(2 / s)
  # Scale 1 (w = 0) samples the conditional component itself.
  plain = np.asarray(one(mc, sc).guide(one(mu, su), 1.0).sample(jax.random.key(4)))[:, 0, 0]
  assert abs(plain.mean() - mc) < 5 * sc / np.sqrt(s)
  assert abs(plain.std() - sc) < 5 * sc * np.sqrt(0.5 / s)


def test_guided_gmm_falls_back_to_the_conditional_where_the_guided_density_diverges():
  # (1+w)/sc^2 < w/su^2: the guided "density" grows without bound; every channel falls back.
  cond = GMM(jnp.zeros((64, 1, 1)), jnp.zeros((64, 1, 1, 1)), jnp.full((64, 1, 1, 1), 2.0))
  unc = GMM(jnp.zeros((64, 1, 1)), jnp.zeros((64, 1, 1, 1)), jnp.full((64, 1, 1, 1), 0.5))
  x, ok = cond.guide(unc, 3.0).sample_with_acceptance(jax.random.key(0))
  assert not np.asarray(ok).any() and np.isfinite(np.asarray(x)).all()


def test_categorical_guide_log_prob_and_loss_against_numpy():
  rng = np.random.default_rng(0)
  c, u = rng.normal(size=(2, 2, 3, 5))
  s = np.array([1.5, 3.0])
  got = np.asarray(Categorical(jnp.asarray(c)).guide(Categorical(jnp.asarray(u)),
                                                     jnp.asarray(s)).logits)
  np.testing.assert_allclose(got, u + s[:, None, None] * (c - u), rtol=1e-5, atol=1e-5)
  x = rng.integers(0, 5, (2, 3))
  want = np.take_along_axis(log_softmax(c, -1), x[..., None], -1)[..., 0]
  dist = Categorical(jnp.asarray(c, jnp.float32), label_smoothing=0.1)
  np.testing.assert_allclose(np.asarray(dist.log_prob(jnp.asarray(x))), want, rtol=1e-5)
  loss, nll = dist.loss(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(nll), -want, rtol=1e-5)   # unsmoothed NLL.
  soft = np.full(5, 0.1 / 5) + 0.9 * np.eye(5)[x]
  np.testing.assert_allclose(float(loss), -(soft * log_softmax(c, -1)).sum(-1).mean(), rtol=1e-5)


def test_wrong_target_dtype_or_shape_names_both_shapes():
  gmm = GMM(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4, 3)), jnp.ones((2, 3, 4, 3)))
  with pytest.raises(ValueError, match=r"head 'gmm' takes targets \[2, 3, 3\] of float32, got "
                                       r"\[2, 3, 5\] of float32"):
    gmm.loss(jnp.zeros((2, 3, 5)))
  with pytest.raises(ValueError, match=r"takes targets \[2, 3, 3\] of float32, got \[2, 3\] of "
                                       r"int32"):
    gmm.log_prob(jnp.zeros((2, 3), jnp.int32))
  cat = Categorical(jnp.zeros((2, 3, 5)))
  with pytest.raises(ValueError, match=r"head 'categorical' takes targets \[2, 3\] of int32, got "
                                       r"\[2, 3, 4\] of float32"):
    cat.loss(jnp.zeros((2, 3, 4)))


def _config(**head):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({"head": dict(head)})
  return c


def test_build_head_reads_declared_fields_and_rejects_bad_names():
  head = build_head(_config(name="categorical", label_smoothing=0.2), 8, _Discrete(),
                    rngs=nnx.Rngs(0))
  assert head.label_smoothing == 0.2 and head.token_shape == () and head.token_dtype == jnp.int32
  assert isinstance(head(jnp.zeros((1, 2, 8))), Categorical)
  with pytest.raises(KeyError, match=r"unknown head 'softmax'.*\['arinar', 'categorical', "
                                     r"'diffusion', 'flow', 'global_diffusion', 'gmm', 'shortcut', "
                                     r"'spatial_flow'\]"):
    build_head(_config(name="softmax"), 8, _Discrete(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['label_smoothing'\] for head 'gmm'"):
    build_head(_config(name="gmm", label_smoothing=0.1), 8, _Continuous(), rngs=nnx.Rngs(0))
  for name in ("gmm", "diffusion", "flow", "shortcut"):  # the head and the tokenizer named.
    with pytest.raises(ValueError, match=rf"head '{name}' is a continuous head and needs "
                       r"continuous tokens .* got _Discrete with vocab_size=5, token_dim=0"):
      build_head(_config(name=name), 8, _Discrete(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"head 'categorical' needs a discrete tokenizer .* got "
                     r"_Continuous with vocab_size=0, token_dim=3: use a continuous head "
                     r"\(model.head.name in \['arinar', 'diffusion', 'flow', 'global_diffusion', "
                     r"'gmm', 'shortcut'\]\)"):
    build_head(_config(name="categorical"), 8, _Continuous(), rngs=nnx.Rngs(0))
  assert HEADS.names() == ["arinar", "categorical", "diffusion", "flow", "global_diffusion", "gmm",
                           "shortcut", "spatial_flow"]


def test_a_run_written_with_the_string_head_field_still_builds():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({"head": "categorical", "label_smoothing": 0.3})
  assert build_head(c, 8, _Discrete(), rngs=nnx.Rngs(0)).label_smoothing == 0.3
