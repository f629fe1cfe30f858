"""The raster AR model: causality, KV-cache decoding equals recomputation, preset sizes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.config import load_config
from arjax.inspect import inspect_config
from tests.helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def model_and_inputs():
  fm, config = tiny_model(tiny_config(model__backbone__num_kv_heads=2))
  params = fm.initial_params()
  rng = np.random.default_rng(0)
  n = fm.bind(params).tokenizer.tokens_per_image
  tokens = jnp.asarray(rng.integers(0, 4, size=(3, n)), jnp.int32)
  labels = jnp.asarray([1, 7, 10], jnp.int32)  # 10 = the null class
  return fm, params, tokens, labels


def test_changing_a_future_token_never_changes_an_earlier_logit(model_and_inputs):
  fm, params, tokens, labels = model_and_inputs
  logits_fn = jax.jit(lambda p, t, l: fm.bind(p).logits(t, l))
  base = np.asarray(logits_fn(params, tokens, labels))
  n = tokens.shape[1]
  for j in (0, 17, n - 2):
    changed = tokens.at[:, j].set((tokens[:, j] + 1) % 4)
    out = np.asarray(logits_fn(params, changed, labels))
    # Sequence index i predicts x_i from x_<i, so x_j can only affect indices > j.
    np.testing.assert_array_equal(out[:, :j + 1], base[:, :j + 1])
    assert np.abs(out[:, j + 1:] - base[:, j + 1:]).max() > 1e-4


def test_kv_cache_logits_equal_full_recompute(model_and_inputs):
  fm, params, tokens, labels = model_and_inputs
  full = np.asarray(jax.jit(lambda p: fm.bind(p).logits(tokens, labels))(params))

  @jax.jit
  def cached(p):
    model = fm.bind(p)
    caches = model.init_cache(tokens.shape[0])
    first, caches = model.decode_prefix(labels, caches)   # head Distributions [B, T].
    outs = [first.logits]
    # Feed in chunks of different sizes to exercise multi-token writes: 1, then 5, then rest.
    i, n = 0, tokens.shape[1] - 1
    for size in (1, 5, n - 6):
      dist, caches = model.decode_tokens(tokens[:, i:i + size], i, caches)
      outs.append(dist.logits)
      i += size
    return jnp.concatenate(outs, axis=1)

  np.testing.assert_allclose(np.asarray(cached(params)), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("size,expected", [("B", 111e6), ("L", 343e6), ("XL", 775e6),
                                           ("XXL", 1.4e9), ("3B", 3.1e9)])
def test_llamagen_preset_parameter_counts(size, expected):
  config = load_config(f"configs/imagenet256/llamagen.py:size={size}")
  count = inspect_config(config)["params"]
  # 1 %, or the rounding of a figure written with two significant digits (1.4B, 3.1B).
  tol = 0.01 * expected if expected < 1e9 else 0.05e9
  assert abs(count - expected) <= tol, (size, count)


def test_llamagen_shapes_match_the_paper():
  config = load_config("configs/imagenet256/llamagen.py:size=L")
  b = config.model.backbone
  assert (b.num_layers, b.num_heads, b.dim) == (24, 16, 1024)
  assert b.rope_null == "zero" and b.position == "rope2d"
