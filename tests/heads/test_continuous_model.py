"""The continuous heads inside the causal raster model (configs/continuous/causal.py): a
continuous head on a discrete tokenizer (or the reverse) fails at build naming both, and latents
of the wrong channel count name both shapes. Abstract builds only (nnx.eval_shape): no
parameters are allocated and nothing is compiled."""
import jax.numpy as jnp
import pytest
from flax import nnx

from arjax.models import build_model
from tests.helpers import tiny_config


def _config(head: str, continuous: bool):
  c = tiny_config(tokenizer__continuous=continuous, tokenizer__channels=1)
  c.model.head = {"name": head} if head != "categorical" else {"name": head,
                                                                "label_smoothing": 0.0}
  return c


@pytest.mark.parametrize("head", ["diffusion", "flow", "gmm"])
def test_a_continuous_head_on_a_discrete_tokenizer_names_both(head):
  with pytest.raises(ValueError, match=rf"head '{head}' is a continuous head and needs continuous "
                                       r"tokens .* got PixelTokenizer with vocab_size=4, "
                                       r"token_dim=0"):
    nnx.eval_shape(lambda: build_model(_config(head, continuous=False)))


def test_the_categorical_head_on_continuous_tokens_names_both():
  with pytest.raises(ValueError, match=r"head 'categorical' needs a discrete tokenizer .* got "
                                       r"PixelTokenizer with vocab_size=0, token_dim=1"):
    nnx.eval_shape(lambda: build_model(_config("categorical", continuous=True)))


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_latents_of_the_wrong_channel_count_name_both_shapes(head):
  batch = {"latents": jnp.zeros((2, 49, 3)), "label": jnp.zeros((2,), jnp.int32)}
  with pytest.raises(ValueError, match=rf"head '{head}' takes targets \[2, 49, 1\] of float32, "
                                       r"got \[2, 49, 3\] of float32"):
    nnx.eval_shape(lambda: build_model(_config(head, continuous=True)).loss(batch, train=True))
