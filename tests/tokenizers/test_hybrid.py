"""HART's hybrid option of the multi-scale quantizer (quantizer.hybrid; tiny: scales 1,2,4 on a
4x4 map, code dim 4, eager, no jit):

- f_hat_discrete + residual equals the encoder latent (float32, 1e-6) and f_hat_discrete is the
  discrete decode of the tokens (bit-identical);
- the decoder input: with the path draw kept it is f (the residual added), with it skipped
  f_hat_discrete alone; both paths enumerated through fixed keys, and the training call sees
  both paths over its draws while evaluation always adds the residual;
- bad input (skip probability outside [0, 1], hybrid without residual scales, a residual of the
  wrong shape) is refused by name.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.tokenizers.quantizers.multiscale import MultiScaleVQ, hybrid_decoder_input

SCALES = (1, 2, 4)


@pytest.fixture(scope="module")
def vq():
  q = MultiScaleVQ(4, rngs=nnx.Rngs(params=0, dropout=1), codebook_size=16, code_dim=4,
                   scales=SCALES, hybrid=True, skip_continuous_prob=0.5)
  # A spread-out codebook (the init's +-1/V rows would all quantize to near zero).
  q.codebook[...] = jnp.asarray(np.random.default_rng(0).standard_normal((16, 4)), jnp.float32)
  return q


@pytest.fixture(scope="module")
def z():
  return jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 4, 4)), jnp.float32)


def test_discrete_plus_residual_is_the_latent(vq, z):
  tokens, f_hat, residual = vq.hybrid_split(z)
  assert tokens.shape == (2, 1 + 4 + 16)
  np.testing.assert_allclose(np.asarray(f_hat + residual), np.asarray(z), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(vq.decode(tokens)), np.asarray(f_hat))
  np.testing.assert_array_equal(np.asarray(vq.encode(z)), np.asarray(tokens))
  assert float(jnp.abs(residual).max()) > 1e-2  # 16 codes leave a real residual.
  np.testing.assert_allclose(np.asarray(vq.decode_hybrid(tokens, residual)), np.asarray(z),
                             rtol=0, atol=1e-6)


def test_both_decoder_paths_enumerated(vq, z):
  _, f_hat, _ = vq.hybrid_split(z)
  seen = {}
  for i in range(16):  # fixed keys: u = uniform(key) decides the path (u >= 0.5 keeps it)
    key = jax.random.key(i)
    u = float(jax.random.uniform(key, ()))
    keep = bool(vq.continuous_keep(True, key))
    assert keep == (u >= 0.5)
    seen[keep] = np.asarray(hybrid_decoder_input(z, f_hat, keep))
  assert set(seen) == {True, False}
  np.testing.assert_allclose(seen[True], np.asarray(z), rtol=0, atol=1e-6)
  np.testing.assert_array_equal(seen[False], np.asarray(f_hat))
  assert bool(vq.continuous_keep(False))  # evaluation always adds the residual


def test_training_call_sees_both_paths(vq, z):
  _, f_hat, _ = vq.hybrid_split(z)
  kept = set()
  for _ in range(12):  # the module's dropout stream (seed 1): both paths appear
    out = vq(z, train=True)
    k = bool(out.metrics["continuous_kept"] > 0.5)
    kept.add(k)
    np.testing.assert_allclose(np.asarray(out.z_q), np.asarray(z if k else f_hat), rtol=0,
                               atol=1e-6)
  assert kept == {True, False}
  out = vq(z, train=False)
  np.testing.assert_allclose(np.asarray(out.z_q), np.asarray(z), rtol=0, atol=1e-6)


def test_gradient_reaches_the_encoder_on_both_paths(vq, z):
  _, f_hat, _ = vq.hybrid_split(z)
  for keep in (True, False):
    g = jax.grad(lambda f: jnp.sum(f + jax.lax.stop_gradient(
        hybrid_decoder_input(f, f_hat, keep) - f)))(z)
    np.testing.assert_array_equal(np.asarray(g), np.ones_like(np.asarray(z)))


def test_bad_input_named(vq, z):
  with pytest.raises(ValueError, match=r"quantizer.skip_continuous_prob=1.5; expected a number "
                                       r"in \[0, 1\]"):
    MultiScaleVQ(4, rngs=nnx.Rngs(0), code_dim=4, scales=SCALES, hybrid=True,
                 skip_continuous_prob=1.5)
  with pytest.raises(ValueError, match=r"quantizer.hybrid=True needs quantizer.residual=True"):
    MultiScaleVQ(4, rngs=nnx.Rngs(0), code_dim=4, scales=SCALES, hybrid=True, residual=False)
  tokens = vq.encode(z)
  with pytest.raises(ValueError, match=r"residual must be \[B, 4, 4, 4\] .* got \[2, 4, 4, 3\]"):
    vq.decode_hybrid(tokens, jnp.zeros((2, 4, 4, 3)))
