"""chex shape checks at the public boundaries: a wrong shape or dtype handed to a sampler, a
head's loss, a tokenizer or FunctionalModel.bind is one ValueError line naming the argument and
the expected shape (what the entry points print as `error: ...`), never an error from deep inside
a traced loop. The checks read static shapes only, so under jit they run once, at trace time."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import cli
from arjax.core.checks import check_array, check_key
from arjax.heads.categorical import Categorical
from arjax.sampling import SamplingConfig, build_sampler
from tests.helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def tiny():
  fm, config = tiny_model(tiny_config(model__name="ordered_ar", order__name="randar",
                                      tokenizer__resolution=4))
  return fm, fm.initial_params(), config


def _one_line(err: Exception) -> str:
  text = cli.message(err)
  assert "\n" not in str(err), str(err)
  return text


@pytest.mark.parametrize("sampler", ["order", "sequential"])
def test_wrong_labels_and_key_are_named(tiny, sampler):
  fm, params, config = tiny
  if sampler == "sequential":
    fm, config = tiny_model()
    params = fm.initial_params()
  s = build_sampler(fm, SamplingConfig(temperature=0.0, name=sampler), config)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"labels must be of rank 1 with an integer dtype \(B class "
                                       r"labels\), got \[2, 1\] of int32") as e:
    s.sample_tokens(params, jnp.zeros((2, 1), jnp.int32), key)
  assert f"sampler {sampler!r} sample_tokens" in _one_line(e.value)
  with pytest.raises(ValueError, match=r"labels must be .*, got \[2\] of float32"):
    s.sample_tokens(params, jnp.zeros((2,), jnp.float32), key)
  with pytest.raises(ValueError, match=r"rng must be one PRNG key .*got \[2, 2\] of uint32"):
    s.sample_tokens(params, jnp.zeros((2,), jnp.int32), jax.random.split(jax.random.PRNGKey(0)))


def test_wrong_known_and_given_are_named(tiny):
  fm, params, config = tiny
  s = build_sampler(fm, SamplingConfig(temperature=0.0, name="order"), config)
  n = fm.bind(params).num_tokens
  h = int(np.sqrt(n))
  labels, key = jnp.array([1, 2], jnp.int32), jax.random.key(0)
  given = jnp.zeros((2, n), jnp.int32)
  with pytest.raises(ValueError, match=r"known must be \[\.\.\.\] of bool \(the inpainting "
                                       rf"mask\), got \[2, {n}\] of int32"):
    s.sample_tokens(params, labels, key, known=jnp.zeros((2, n), jnp.int32), given=given)
  with pytest.raises(ValueError, match=r"known must be a bool mask \[N\], \[B, N\], \[H, W\] or "
                                       rf"\[B, H, W\], got \[1, 2, {h}, {h}\]"):
    s.sample_tokens(params, labels, key, known=jnp.zeros((1, 2, h, h), bool), given=given)
  with pytest.raises(ValueError, match=rf"given must be \[2, \.\.\.\] \(B=2 as labels.*got "
                                       rf"\[3, {n}\] of int32"):
    s.sample_tokens(params, labels, key, known=jnp.zeros((2, n), bool),
                    given=jnp.zeros((3, n), jnp.int32))
  # The right shapes still sample, keeping the given cells.
  known = np.zeros((2, n), bool)
  known[:, :5] = True
  given = jnp.asarray(np.arange(2 * n).reshape(2, n) % 4, jnp.int32)
  out = np.asarray(s.sample_tokens(params, labels, key, known=jnp.asarray(known), given=given))
  np.testing.assert_array_equal(out[:, :5], np.asarray(given)[:, :5])


def test_head_targets_and_weights_are_named_also_under_jit():
  dist = Categorical(logits=jnp.zeros((2, 3, 5)))
  with pytest.raises(ValueError, match=r"head 'categorical' takes targets \[2, 3\] of int32, "
                                       r"got \[2, 4\] of int32"):
    jax.jit(lambda t: dist.loss(t)[0])(jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match=r"takes targets \[2, 3\] of int32, got \[2, 3\] of "
                                       r"float32"):
    dist.log_prob(jnp.zeros((2, 3), jnp.float32))
  with pytest.raises(ValueError, match=r"head 'categorical' takes loss weights \[2, 3\] \(one "
                                       r"per position\), got \[2\]"):
    dist.loss(jnp.zeros((2, 3), jnp.int32), weights=jnp.ones((2,)))
  # The right shapes: the loss of uniform logits is log(5) per token.
  loss, per_token = dist.loss(jnp.zeros((2, 3), jnp.int32), weights=jnp.ones((2, 3)))
  np.testing.assert_allclose(np.asarray(per_token), np.log(5.0), rtol=1e-6)


def test_tokenizer_decode_and_bind_name_the_shape(tiny):
  fm, params, _ = tiny
  model = fm.bind(params)
  n = model.tokenizer.tokens_per_image
  with pytest.raises(ValueError, match=rf"pixel tokenizer decode: tokens must be \[\*, {n}\] of "
                                       rf"an integer dtype \(\[B, N\]\), got \[2, {n + 1}\]"):
    model.tokenizer.decode(jnp.zeros((2, n + 1), jnp.int32))
  images = np.asarray(model.tokenizer.decode(jnp.full((2, n), 3, jnp.int32)))
  assert images.shape == (2, 4, 4, 1) and (images == 224).all()  # (3 + 0.5) * 256 / 4
  bad = jax.tree.map(lambda x: x, params)
  bad["head"] = jax.tree.map(lambda x: jnp.zeros(x.shape[:-1] + (x.shape[-1] + 1,), x.dtype),
                             bad["head"])
  with pytest.raises(ValueError, match=r"FunctionalModel.bind: parameter 'head/.*' must be "
                                       r"\[.*\] \(as the model was built\), got"):
    fm.bind(bad)
  with pytest.raises(ValueError, match=r"FunctionalModel.bind: params lack parameter "):
    fm.bind({k: v for k, v in params.items() if k != "head"})
  with pytest.raises(ValueError, match=r"FunctionalModel.bind: rng must be one PRNG key"):
    fm.bind(params, rng=jnp.zeros((3,), jnp.uint32))


def test_check_helpers_accept_what_they_should():
  check_array(np.zeros((2, 3), np.int64), "x", "f", shape=(None, 3), kind="int")
  check_array(jnp.zeros((2, 3, 4), bool), "x", "f", shape=(2, ...), kind="bool")
  check_key(jax.random.key(1), "rng", "f")
  check_key(jax.random.PRNGKey(1), "rng", "f")
  with pytest.raises(ValueError, match=r"f: x must be an array, got list"):
    check_array([1, 2], "x", "f", rank=1)
