"""1D-token (TiTok-style) encoder/decoder: shapes through every 2D-free quantizer, the
Tokenizer interface, gradients reaching the latent queries, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.models import build_model
from arjax.recipes.tokenizers import tokenizer_config
from arjax.core.functional import FunctionalModel


def titok_config(quantizer="vq", **fields):
  c = tokenizer_config(quantizer, smoke=True)
  c.model.encoder = "titok"
  c.model.titok.num_tokens, c.model.titok.width, c.model.titok.depth = 6, 16, 1
  c.model.titok.patch_size = 7
  for k, v in fields.items():
    c.model.titok[k] = v
  return c


@pytest.mark.parametrize("quantizer,token_shape", [("vq", (2, 6)), ("kl", (2, 6, 4))])
def test_shapes_through_quantizers(quantizer, token_shape):
  fm = FunctionalModel(build_model(titok_config(quantizer)))
  model = fm.bind(fm.initial_params())
  assert model.grid == (1, 6) and model.tokens_per_image == 6
  np.testing.assert_array_equal(model.grid_positions(), np.stack([np.zeros(6), np.arange(6)], -1))
  images = np.random.RandomState(0).randint(0, 256, (2, 28, 28, 1)).astype(np.uint8)
  z = model.latents(jnp.zeros((2, 28, 28, 1)))
  assert z.shape == (2, 1, 6, model.quantizer.in_channels)
  tokens = model.encode(images)
  assert tokens.shape == token_shape
  out = model.decode(tokens)
  assert out.shape == (2, 28, 28, 1) and out.dtype == jnp.uint8
  rec, tok2 = model.reconstruct(images)
  np.testing.assert_array_equal(np.asarray(rec), np.asarray(out))


def test_gradients_reach_the_latent_queries_and_mask_tokens():
  fm = FunctionalModel(build_model(titok_config("fsq")))
  params = fm.initial_params()
  batch = {"image": np.random.RandomState(1).randint(0, 256, (2, 28, 28, 1)).astype(np.uint8)}
  # Jitted: one compile of the backward pass costs ~5x less than running it op by op.
  grads = jax.jit(jax.grad(lambda p: fm.bind(p).loss(batch, train=False)[0]))(params)
  assert np.abs(grads["encoder"]["queries"]).max() > 0
  assert np.abs(grads["decoder"]["mask"]).max() > 0


def test_bad_patch_size_and_heads_fail_naming_fields():
  with pytest.raises(ValueError,
                     match="image size 28x28 is not divisible by the model.titok.patch_size"):
    build_model(titok_config(patch_size=5))
  with pytest.raises(ValueError,
                     match="model.titok.width=16 is not divisible by model.titok.num_heads=3"):
    build_model(titok_config(num_heads=3))


def test_mnist_recipe_configs_titok_and_vq_ema():
  """configs/tokenizers/titok.py is FSQ behind the 1D encoder at the conv rows' 441 bits, and
  vq.py:ema gives a VQ whose codebook is model state (not a parameter the optimizer sees)."""
  from arjax.config import load_config
  c = load_config("configs/tokenizers/titok.py")
  assert (c.model.encoder, c.model.quantizer.name, c.model.loss.rec) == ("titok", "fsq", "l2")
  assert c.train.num_steps == 1000 and c.model.titok.num_tokens == 49
  fm = FunctionalModel.abstract(lambda: build_model(c))
  model = fm.bind(fm.abstract_params)
  bits = model.tokens_per_image * np.log2(model.vocab_size)
  assert model.tokens_per_image == 49 and bits == 441
  assert fm.param_count() == 219_283                     # docs/tokenizers.md: 0.22M.
  ema = load_config("configs/tokenizers/vq.py:ema:smoke".replace(":smoke", ",smoke", 1))
  q = ema.model.quantizer
  assert (q.ema_decay, q.dead_code_threshold) == (0.99, 1.0)
  fm = FunctionalModel.abstract(lambda: build_model(ema))
  assert "codebook" in fm.abstract_model_state["quantizer"]
  assert "codebook" not in fm.abstract_params["quantizer"]
