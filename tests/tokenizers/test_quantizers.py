"""Quantizers: lookups against brute force, straight-through gradients, index <-> code
bijections, multi-scale residuals, KL closed form and Monte Carlo, EMA and restarts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.tokenizers import quantizers
from arjax.tokenizers.quantizers.base import usage_metrics
from arjax.tokenizers.quantizers.fsq import FSQ
from arjax.tokenizers.quantizers.kl import DiagonalGaussian, kl_standard_normal
from arjax.tokenizers.quantizers.lfq import LFQ
from arjax.tokenizers.quantizers.multiscale import MultiScaleVQ, phi_index
from arjax.tokenizers.quantizers.vq import (VectorQuantizer, ema_codebook_update,
                                            restart_dead_codes)


def rngs(seed=0):
  return nnx.Rngs(params=seed, dropout=seed + 1, sample=seed + 2)


# -- VQ ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("l2_norm", [False, True])
def test_vq_nearest_neighbour_matches_brute_force(l2_norm):
  q = VectorQuantizer(6, codebook_size=97, code_dim=6, l2_norm=l2_norm, rngs=rngs())
  q.codebook.value = jax.random.normal(jax.random.key(1), (97, 6))
  z = np.random.RandomState(0).randn(3, 5, 7, 6).astype(np.float32)
  e = np.asarray(q.codebook[...], np.float64)
  zz = z.reshape(-1, 6).astype(np.float64)
  if l2_norm:
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    zz = zz / np.linalg.norm(zz, axis=1, keepdims=True)
  d = ((zz[:, None, :] - e[None, :, :]) ** 2).sum(-1)
  want = d.argmin(1).reshape(3, 35)
  out = q(jnp.asarray(z), train=False)
  np.testing.assert_array_equal(np.asarray(out.tokens), want)
  np.testing.assert_array_equal(np.asarray(q.encode(jnp.asarray(z))), want)
  np.testing.assert_allclose(np.asarray(out.z_q).reshape(-1, 6), e[want.reshape(-1)], atol=1e-5)
  np.testing.assert_allclose(np.asarray(q.decode(out.tokens, (5, 7))), np.asarray(out.z_q),
                             atol=1e-6)


def test_vq_straight_through_gradient_is_identity():
  q = VectorQuantizer(4, codebook_size=16, code_dim=4, rngs=rngs())
  z = jax.random.normal(jax.random.key(0), (1, 2, 3, 4))
  jac = jax.jacobian(lambda z: q(z).z_q)(z).reshape(24, 24)
  np.testing.assert_allclose(np.asarray(jac), np.eye(24), atol=1e-6)
  # ... and the loss: codebook term + beta * commitment, both the same MSE in value.
  out = q(z)
  mse = float(jnp.mean(jnp.square(out.z_q - z)))
  np.testing.assert_allclose(float(out.loss), (1.0 + q.beta) * mse, rtol=1e-5)
  # The codebook term trains the codebook; the commitment term trains the encoder, beta-weighted.
  gz = jax.grad(lambda z: q(z).loss)(z)
  np.testing.assert_allclose(np.asarray(gz), np.asarray(2 * q.beta * (z - out.z_q) / z.size),
                             atol=1e-6)


def test_vq_projection_round_trip_shapes_and_usage_metrics():
  q = VectorQuantizer(32, codebook_size=64, code_dim=8, l2_norm=True, rngs=rngs())
  out = q(jax.random.normal(jax.random.key(0), (2, 4, 4, 32)))
  assert out.z_q.shape == (2, 4, 4, 32) and out.tokens.shape == (2, 16)
  idx = np.array([0, 0, 1, 5, 5, 5, 5, 9])
  m = usage_metrics(jnp.asarray(idx), 16)
  p = np.bincount(idx, minlength=16) / len(idx)
  p = p[p > 0]
  np.testing.assert_allclose(float(m["perplexity"]), np.exp(-(p * np.log(p)).sum()), rtol=1e-5)
  np.testing.assert_allclose(float(m["codebook_usage"]), 4 / 16)


def test_ema_update_moves_codes_to_cluster_means():
  rng = np.random.RandomState(0)
  z = rng.randn(200, 3).astype(np.float32)
  idx = rng.randint(0, 5, 200)
  count = jnp.ones(6)
  embed_sum = jnp.zeros((6, 3))
  # decay 0: the new code is the mean of its assigned latents (Laplace smoothing ~ nothing).
  _, _, book = ema_codebook_update(count, embed_sum, jnp.asarray(z), jnp.asarray(idx), 0.0, 1e-9)
  for k in range(5):
    np.testing.assert_allclose(np.asarray(book[k]), z[idx == k].mean(0), atol=1e-4)
  assert np.all(np.isfinite(np.asarray(book)))


def test_vq_module_ema_updates_in_place_and_restarts_dead_codes():
  q = VectorQuantizer(2, codebook_size=8, code_dim=2, ema_decay=0.5, dead_code_threshold=1.0,
                      usage_decay=0.0, rngs=rngs())
  assert not isinstance(q.codebook, nnx.Param)  # not trained by the optimizer.
  before = np.asarray(q.codebook[...]).copy()
  z = 5.0 + jax.random.normal(jax.random.key(0), (4, 4, 4, 2))  # far from every code.
  out = q(z, train=True)
  after = np.asarray(q.codebook[...])
  assert not np.allclose(before, after)
  assert float(out.metrics["dead_codes"]) >= 7   # at most one code was hit.
  # Restarted codes are batch latents, so they now sit near 5.
  assert np.median(after[:, 0]) > 3.0
  # The pure restart function leaves live codes alone.
  book = jnp.zeros((4, 2))
  usage = jnp.asarray([5.0, 0.0, 5.0, 0.0])
  new, new_usage, dead = restart_dead_codes(book, usage, jnp.ones((10, 2)), jax.random.key(0), 1.0)
  np.testing.assert_array_equal(np.asarray(dead), [False, True, False, True])
  np.testing.assert_array_equal(np.asarray(new), [[0, 0], [1, 1], [0, 0], [1, 1]])
  assert float(new_usage.min()) >= 1.0


# -- FSQ / LFQ -----------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (7, 5, 5, 5, 5), (2, 3, 4)])
def test_fsq_index_code_bijection_over_all_codes(levels):
  q = FSQ(len(levels), levels=levels, rngs=rngs())
  k = int(np.prod(levels))
  assert q.vocab_size == k
  idx = jnp.arange(k)
  codes = q.indices_to_codes(idx)
  np.testing.assert_array_equal(np.asarray(q.codes_to_indices(codes)), np.arange(k))
  assert len(np.unique(np.asarray(codes), axis=0)) == k
  assert float(jnp.abs(codes).max()) <= 1.0
  # Quantising a code's pre-image gives the code back exactly: the grid is closed.
  z = jax.random.normal(jax.random.key(0), (3, 4, 5, len(levels))) * 3
  out = q(z)
  np.testing.assert_array_equal(np.asarray(q.decode(out.tokens, (4, 5))), np.asarray(out.z_q))
  # Every channel takes exactly L_i values.
  for i, l in enumerate(levels):
    assert len(np.unique(np.asarray(codes[:, i]))) == l


def test_fsq_straight_through_and_projection():
  q = FSQ(3, levels=(5, 5, 5), rngs=rngs())
  z = jax.random.normal(jax.random.key(1), (1, 2, 2, 3)) * 0.1
  jac = jax.jacobian(lambda z: q(z).z_q)(z).reshape(12, 12)
  # d round_ste(bound(z)) / dz = bound'(z) / width: diagonal and positive.
  assert np.allclose(np.asarray(jac) * (1 - np.eye(12)), 0)
  assert np.all(np.diag(np.asarray(jac)) > 0)
  qp = FSQ(16, levels=(8, 8, 8), rngs=rngs())
  assert qp(jnp.ones((2, 3, 3, 16))).z_q.shape == (2, 3, 3, 16)


def test_lfq_index_code_bijection_and_entropy():
  q = LFQ(8, code_dim=8, rngs=rngs(), max_exact_entropy_bits=8)
  idx = jnp.arange(256)
  codes = q.indices_to_codes(idx)
  np.testing.assert_array_equal(np.asarray(q.codes_to_indices(codes)), np.arange(256))
  assert set(np.unique(np.asarray(codes))) == {-1.0, 1.0}
  assert len(np.unique(np.asarray(codes), axis=0)) == 256
  np.testing.assert_array_equal(np.asarray(codes[1]), [-1] * 7 + [1])  # first channel = MSB.
  z = jax.random.normal(jax.random.key(0), (2, 3, 3, 8)) * 0.02
  out = q(z)
  np.testing.assert_array_equal(np.asarray(q.decode(out.tokens, (3, 3))), np.asarray(out.z_q))
  np.testing.assert_allclose(np.asarray(jax.jacobian(lambda z: q(z).z_q)(z).reshape(144, 144)),
                             np.eye(144), atol=1e-6)
  # The factorised per-sample entropy equals the entropy over all 256 codes.
  flat = np.asarray(z, np.float64).reshape(-1, 8)
  c = np.asarray(codes, np.float64)
  logits = -((flat[:, None, :] - c[None]) ** 2).sum(-1) / q.tau
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  sample = -(p * np.log(p + 1e-300)).sum(1).mean()
  avg = p.mean(0)
  book = -(avg * np.log(avg + 1e-300)).sum()
  s, b = q.entropy(z)
  np.testing.assert_allclose(float(s), sample, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(float(b), book, rtol=1e-4, atol=1e-5)
  # Above max_exact_entropy_bits the codebook entropy is the per-bit upper bound.
  q_fact = LFQ(8, code_dim=8, rngs=rngs(), max_exact_entropy_bits=4)
  s2, b2 = q_fact.entropy(z)
  np.testing.assert_allclose(float(s2), sample, rtol=1e-4, atol=1e-5)
  assert float(b2) >= book - 1e-4


# -- multi-scale ---------------------------------------------------------------------------------
def test_phi_ticks_follow_var():
  idx = [phi_index(k, 10, 4) for k in range(10)]
  assert idx[0] == 0 and idx[-1] == 3 and sorted(idx) == idx and set(idx) == {0, 1, 2, 3}
  ticks = np.linspace(1 / 12, 11 / 12, 4)
  for k in range(10):
    assert abs(ticks[idx[k]] - k / 9) <= np.abs(ticks - k / 9).min() + 1e-12


def test_multiscale_residual_error_non_increasing():
  """With a codebook dense enough to quantise the downsampled residual almost exactly, each
  added scale must not increase ||f - f_hat|| (a sign error in the residual update, or a
  resampler mismatch between encode and decode, breaks this)."""
  g = np.linspace(-1.5, 1.5, 48)
  book = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2).astype(np.float32)
  scales = (1, 2, 3, 4, 6, 8, 12, 16)
  q = MultiScaleVQ(2, codebook_size=len(book), code_dim=2, scales=scales, phi_ratio=0.0,
                   rngs=rngs())
  q.codebook.value = jnp.asarray(book)
  # A smooth random field plus fine detail.
  rng = np.random.RandomState(0)
  low = rng.randn(2, 4, 4, 2).astype(np.float32)
  f = np.asarray(jax.image.resize(jnp.asarray(low), (2, 16, 16, 2), "linear")) * 0.5
  f = f + 0.1 * rng.randn(2, 16, 16, 2).astype(np.float32)
  tokens = q.encode(jnp.asarray(f))
  assert tokens.shape == (2, sum(s * s for s in scales))
  errs = [float(jnp.mean(jnp.square(p - f))) for p in q.partial_reconstructions(tokens)]
  assert all(b <= a + 1e-7 for a, b in zip(errs, errs[1:])), errs
  assert errs[-1] < 1e-3 < errs[0]
  # The training forward agrees with encode/decode.
  out = q(jnp.asarray(f))
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(tokens))
  np.testing.assert_allclose(np.asarray(out.z_q), np.asarray(q.decode(tokens)), atol=1e-5)


def test_multiscale_var_shapes_and_phi():
  q = MultiScaleVQ(32, codebook_size=64, code_dim=32, rngs=rngs())
  assert q.num_tokens() == 680 and q.token_positions().shape == (680, 2)
  assert len(q.phis) == 4
  f = jax.random.normal(jax.random.key(0), (1, 16, 16, 32))
  out = q(f, train=True)
  assert out.z_q.shape == f.shape and out.tokens.shape == (1, 680)
  assert q.next_scale_inputs(out.tokens).shape == (1, 680 - 1, 32)
  # Straight-through: d out / d f = I.
  g = jax.grad(lambda f: jnp.sum(q(f).z_q * jnp.arange(32.0)))(f)
  np.testing.assert_allclose(np.asarray(g), np.broadcast_to(np.arange(32.0), f.shape), atol=1e-5)
  with pytest.raises(ValueError, match=r"16x16 .*got 8x8"):
    q(jnp.zeros((1, 8, 8, 32)))


# -- KL ------------------------------------------------------------------------------------------
def test_kl_closed_form_and_monte_carlo():
  rng = np.random.RandomState(0)
  mean = rng.randn(2, 2, 2, 3).astype(np.float32)
  logvar = rng.uniform(-2, 1, (2, 2, 2, 3)).astype(np.float32)
  want = 0.5 * (mean.astype(np.float64) ** 2 + np.exp(logvar) - 1 - logvar)
  np.testing.assert_allclose(np.asarray(kl_standard_normal(jnp.asarray(mean), jnp.asarray(logvar))),
                             want, rtol=1e-5, atol=1e-6)
  q = DiagonalGaussian(6, latent_dim=3, kl_weight=0.5, rngs=rngs())
  moments = jnp.asarray(np.concatenate([mean, logvar], -1))
  out = q(moments, train=True)
  np.testing.assert_allclose(float(out.loss), 0.5 * want.reshape(2, -1).sum(1).mean(), rtol=1e-5)
  # Monte Carlo: E_q[log q(z) - log p(z)] from 200k samples of one element.
  m, lv = 0.7, -1.2
  z = m + np.exp(0.5 * lv) * np.random.RandomState(1).randn(200_000)
  log_q = -0.5 * (np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv))
  log_p = -0.5 * (np.log(2 * np.pi) + z ** 2)
  est, se = (log_q - log_p).mean(), (log_q - log_p).std() / np.sqrt(len(z))
  closed = float(kl_standard_normal(jnp.asarray(m), jnp.asarray(lv)))
  assert abs(est - closed) < 4 * se, (est, closed, se)
  # The module's samples have the posterior's moments; tokens carry the scale factor.
  big = jnp.broadcast_to(jnp.asarray([m, m, m, lv, lv, lv]), (4, 32, 32, 6))
  s = np.asarray(q(big, train=True).z_q)
  np.testing.assert_allclose(s.mean(), m, atol=0.02)
  np.testing.assert_allclose(s.std(), np.exp(0.5 * lv), rtol=0.05)
  enc = q.encode(big)
  np.testing.assert_allclose(np.asarray(enc), m * 0.2325, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(q.decode(enc, (32, 32))), m, rtol=1e-6)


def test_registry_and_config_errors():
  assert set(quantizers.QUANTIZERS.names()) == {"vq", "fsq", "lfq", "multiscale", "kl"}
  c = quantizers.default_config("vq", codebook_size=32)
  q = quantizers.build_quantizer(c, in_channels=8, rngs=rngs())
  assert q.vocab_size == 32
  c.levels = [8, 8]
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['levels'\]"):
    quantizers.build_quantizer(c, in_channels=8, rngs=rngs())
  with pytest.raises(KeyError, match="no field 'codebook_size'"):
    quantizers.default_config("fsq", codebook_size=3)
