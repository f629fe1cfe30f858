"""The continuous heads inside the causal raster model (configs/continuous/causal.py): a
continuous head on a discrete tokenizer (or the reverse) fails at build naming both, and latents
of the wrong channel count name both shapes (abstract builds, nnx.eval_shape: nothing is
allocated or compiled); CAM-style noise augmentation: the training noise level is uniform per
sequence, the inference noise is fixed per row and position, and bad settings fail in one line."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from arjax.models import build_model
from tests.helpers import tiny_config


def _config(head: str, continuous: bool):
  c = tiny_config(tokenizer__continuous=continuous, tokenizer__channels=1)
  c.model.head = {"name": head} if head != "categorical" else {"name": head,
                                                                "label_smoothing": 0.0}
  return c


@pytest.mark.parametrize("head", ["diffusion", "flow", "gmm", "arinar"])
def test_a_continuous_head_on_a_discrete_tokenizer_names_both(head):
  with pytest.raises(ValueError, match=rf"head '{head}' is a continuous head and needs continuous "
                                       r"tokens .* got PixelTokenizer with vocab_size=4, "
                                       r"token_dim=0"):
    nnx.eval_shape(lambda: build_model(_config(head, continuous=False)))


def test_the_categorical_head_on_continuous_tokens_names_both():
  with pytest.raises(ValueError, match=r"head 'categorical' needs a discrete tokenizer .* got "
                                       r"PixelTokenizer with vocab_size=0, token_dim=1"):
    nnx.eval_shape(lambda: build_model(_config("categorical", continuous=True)))


# Continuous heads on 'ordered_ar' (and the refusal of 'arpg', 'nar', 'ardm'):
# tests/models/test_ordered_continuous.py.


@pytest.mark.parametrize("head", ["diffusion", "flow", "arinar"])
def test_latents_of_the_wrong_channel_count_name_both_shapes(head):
  batch = {"latents": jnp.zeros((2, 49, 3)), "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match=rf"head '{head}' takes targets \[2, 49, 1\] of float32, "
                                       r"got \[2, 49, 3\] of float32"):
    nnx.eval_shape(lambda: build_model(_config(head, continuous=True)).loss(batch, train=True))


# -- CAM-style noise augmentation of continuous context (model.input_noise, input_noise_eval) --------
def test_context_noise_has_a_uniform_level_per_sequence():
  # 4000 sequences of 64 x 4 zeros, max level 0.3, seed 0. E[x^2] = E[sigma^2] = 0.3^2 / 3;
  # tolerance 5 standard errors of the mean over sequences (sigma^2 ~ U(0, 0.3)^2 has sd
  # 0.3^2 * 2 / sqrt(45)). Every sequence's level is at most 0.3 (its sample sd from 256 draws
  # within 15 %), and some sequences are nearly clean (min sd < 0.01).
  from arjax.models.raster_ar import context_noise
  x = np.asarray(context_noise(jax.random.key(0), jnp.zeros((4000, 64, 4)), 0.3))
  per_seq = (x ** 2).mean((1, 2))
  se = 0.09 * 2 / np.sqrt(45) / np.sqrt(4000)
  assert abs(per_seq.mean() - 0.03) < 5 * se, per_seq.mean()
  sd = np.sqrt(per_seq)
  assert sd.max() < 0.3 * 1.15 and sd.min() < 0.01


def test_decode_noise_is_fixed_per_row_and_position():
  from arjax.models.raster_ar import decode_noise
  tokens = jnp.zeros((3, 2, 4))
  a = np.asarray(decode_noise(tokens, 5, 0.1))
  np.testing.assert_array_equal(a, np.asarray(decode_noise(tokens, jnp.array([5, 5, 5]), 0.1)))
  b = np.asarray(decode_noise(tokens, jnp.array([5, 6, 5]), 0.1))
  np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])      # rows at the same index agree,
  assert np.abs(a[1] - b[1]).min() > 0 and np.abs(a[0] - a[2]).min() > 0  # others differ.
  big = np.asarray(decode_noise(jnp.zeros((4000, 1, 4)), 0, 0.1))
  assert abs(big.std() - 0.1) < 5 * 0.1 / np.sqrt(2 * big.size)


@pytest.mark.parametrize("field,value,message", [
    ("input_noise", -0.1, r"model.input_noise=-0.1; expected a finite number >= 0"),
    ("input_noise_eval", float("inf"), r"model.input_noise_eval=inf; expected a finite number"),
])
def test_bad_noise_fields_fail_naming_the_field(field, value, message):
  c = _config("flow", continuous=True)
  c.model[field] = value
  with pytest.raises(ValueError, match=message):
    nnx.eval_shape(lambda: build_model(c))


def test_noise_augmentation_on_discrete_tokens_fails_naming_the_head():
  c = _config("categorical", continuous=False)
  c.model.input_noise = 0.2
  with pytest.raises(ValueError, match=r"noise augmentation applies to continuous tokens, but "
                                       r"head 'categorical' takes discrete ones"):
    nnx.eval_shape(lambda: build_model(c))
