"""Zero-shot resolution extrapolation (RandAR's claim): a 4x4-trained random-order model sampled
on a 6x6 grid with the same parameters; given cells kept exactly; grid-bound models refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.sampling import SamplingConfig
from arjax.sampling.extrapolate import model_at_resolution, sample_at_resolution
from arjax.sampling.orders import build_sampler
from tests.helpers import tiny_config, tiny_model

SAMPLING = SamplingConfig(cfg_scale=1.0, temperature=1.0, top_k=0, top_p=1.0)


def _randar():
  config = tiny_config(model__name="ordered_ar", order__name="randar", tokenizer__resolution=4)
  fm, config = tiny_model(config)
  return config, fm, fm.initial_params()


def test_randar_samples_a_larger_grid_with_its_trained_parameters():
  config, fm, params = _randar()
  labels = jnp.array([1, 7], jnp.int32)
  rng = jax.random.key(3)
  # At the trained size it is exactly the model's own sampler.
  same = sample_at_resolution(config, params, 4, labels, rng, SAMPLING)
  own = build_sampler(fm, SAMPLING, config).sample_tokens(params, labels, rng)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(own))
  # At 6x6: 36 tokens in the vocabulary, and the 4x4 sample given in the top-left corner kept.
  big = np.asarray(sample_at_resolution(config, params, 6, labels, rng, SAMPLING))
  assert big.shape == (2, 36) and big.min() >= 0 and big.max() < config.tokenizer.levels
  corner = np.zeros((6, 6), bool)
  corner[:4, :4] = True
  given = np.zeros((2, 6, 6), np.int32)
  given[:, :4, :4] = np.asarray(own).reshape(2, 4, 4)
  out = np.asarray(sample_at_resolution(config, params, 6, labels, jax.random.key(4), SAMPLING,
                                        known=jnp.asarray(corner.reshape(-1)),
                                        given=jnp.asarray(given.reshape(2, 36))))
  np.testing.assert_array_equal(out.reshape(2, 6, 6)[:, :4, :4], np.asarray(own).reshape(2, 4, 4))
  assert (out.reshape(2, 6, 6)[:, 4:, :] != 0).any()  # the new cells were generated.


def test_grid_bound_models_are_refused_by_name():
  # RAR's target-aware table has one row per cell: it cannot serve another grid.
  config = tiny_config(model__name="ordered_ar", order__name="random", tokenizer__resolution=4,
                       model__target_aware=True)
  fm, config = tiny_model(config)
  with pytest.raises(ValueError, match=r"cannot extrapolate to resolution 6: parameters depend"):
    model_at_resolution(config, fm.initial_params(), 6)
  config = tiny_config(model__backbone__position="learned", model__backbone__max_positions=17,
                       tokenizer__resolution=4)
  with pytest.raises(ValueError, match="position='learned' cannot extrapolate"):
    model_at_resolution(config, {}, 6)
