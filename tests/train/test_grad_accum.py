"""Gradient accumulation inside the jitted step: k micro-batches give the same update as one
step on the whole batch (float tolerance), and a batch k does not divide is refused by name."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arjax.train.state import initial_state
from arjax.train.step import make_train_step, split_micro_batches
from tests.helpers import tiny_config, tiny_model


def test_micro_batches_take_every_kth_row():
  x = jnp.arange(12).reshape(6, 2)
  mb = split_micro_batches({"x": x}, 3)["x"]
  assert mb.shape == (3, 2, 2)
  np.testing.assert_array_equal(np.asarray(mb[1]), np.asarray(x[1::3]))


def test_accumulated_step_equals_one_big_step():
  fm, _ = tiny_model(tiny_config(model__class_dropout=0.0))
  params = fm.initial_params()
  n = fm.bind(params).tokenizer.tokens_per_image
  rng = np.random.default_rng(0)
  batch = {"tokens": jnp.asarray(rng.integers(0, 4, size=(8, n)), jnp.int32),
           "label": jnp.asarray(rng.integers(0, 10, size=(8,)), jnp.int32)}
  tx = optax.sgd(0.5)  # the update is -0.5 * grad: compares gradients directly.
  out = {}
  for k in (1, 4):
    step = jax.jit(make_train_step(fm, tx, lambda s: 0.5, 0.0, grad_accum_steps=k))
    state, metrics = step(initial_state(params, tx, 0, False), batch)
    out[k] = (state.params, metrics.compute())
  for a, b in zip(jax.tree.leaves(out[4][0]), jax.tree.leaves(out[1][0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)
  for name in ("loss", "grad_norm", "accuracy"):
    np.testing.assert_allclose(float(out[4][1][name]), float(out[1][1][name]), rtol=1e-5)
  assert float(out[1][1]["grad_norm"]) > 0


def test_batch_not_divisible_and_bad_k_are_refused():
  fm, _ = tiny_model()
  tx = optax.sgd(0.1)
  with pytest.raises(ValueError, match="grad_accum_steps=0"):
    make_train_step(fm, tx, lambda s: 0.1, 0.0, grad_accum_steps=0)
  step = make_train_step(fm, tx, lambda s: 0.1, 0.0, grad_accum_steps=3)
  params = fm.initial_params()
  n = fm.bind(params).tokenizer.tokens_per_image
  batch = {"tokens": jnp.zeros((8, n), jnp.int32), "label": jnp.zeros((8,), jnp.int32)}
  with pytest.raises(ValueError, match="train.batch_size must be a multiple of 3"):
    jax.eval_shape(step, initial_state(params, tx, 0, False), batch)
