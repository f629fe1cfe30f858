"""The hot loops make no implicit host<->device transfer: a train step on device_put inputs and a
sampler's compiled loop run under `jax.transfer_guard("disallow")` (the `no_implicit_transfers`
fixture of tests/conftest.py), and a control shows the guard does catch an implicit transfer
(a numpy array or a Python scalar handed to a jitted function). On the CPU backend reading a
device value into Python is not a guarded transfer (the buffer is host memory), so the
device-to-host direction is not asserted here."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from arjax.sampling import SamplingConfig, build_sampler
from arjax.train.state import initial_state
from arjax.train.step import make_train_step
from tests.helpers import tiny_config, tiny_model


@pytest.fixture(scope="module")
def tiny():
  fm, config = tiny_model(tiny_config(model__class_dropout=0.0))
  return fm, fm.initial_params(), config


@pytest.fixture(scope="module")
def ordered():
  fm, config = tiny_model(tiny_config(model__name="ordered_ar", order__name="randar",
                                      tokenizer__resolution=4))
  return fm, fm.initial_params(), config


def test_the_guard_catches_implicit_transfers(no_implicit_transfers):
  f = jax.jit(lambda x: x * 2)
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    f(np.ones(3, np.float32))  # numpy in: an implicit host-to-device transfer.
  with pytest.raises(Exception, match="Disallowed host-to-device transfer"):
    f(3.0)  # a Python scalar in: one too.
  y = f(jax.device_put(np.ones(3, np.float32)))  # explicit: allowed.
  np.testing.assert_array_equal(jax.device_get(y), [2.0, 2.0, 2.0])  # explicit: allowed.


def test_train_step_makes_no_implicit_transfer(tiny, no_implicit_transfers):
  fm, params, _ = tiny
  n = fm.bind(params).tokenizer.tokens_per_image
  rng = np.random.default_rng(0)
  tx = optax.adamw(1e-3)
  step = jax.jit(make_train_step(fm, tx, optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10),
                                 0.0))
  with jax.transfer_guard("allow"):  # building the state is set-up, not the hot loop.
    state = jax.device_put(initial_state(params, tx, 0, False))
  batch = jax.device_put({"tokens": rng.integers(0, 4, size=(8, n)).astype(np.int32),
                          "label": rng.integers(0, 10, size=(8,)).astype(np.int32)})
  for _ in range(3):  # the first call compiles; every call runs under the guard.
    state, metrics = step(state, batch)
  out = jax.device_get(metrics.compute())
  assert int(jax.device_get(state.step)) == 3
  assert np.isfinite(out["loss"]) and out["loss"] > 0


@pytest.mark.parametrize("name", ["sequential", "order"])
def test_sampler_loop_makes_no_implicit_transfer(tiny, ordered, name, no_implicit_transfers):
  fm, params, config = tiny if name == "sequential" else ordered
  sampler = build_sampler(fm, SamplingConfig(temperature=1.0, cfg_scale=2.0, name=name), config)
  params = jax.device_put(params)
  labels = jax.device_put(np.array([1, 2, 3], np.int32))
  with jax.transfer_guard("allow"):  # jax.random.key(0) moves its seed: set-up.
    key = jax.random.key(0)
  a = sampler.sample_tokens(params, labels, key)
  b = sampler.sample_tokens(params, labels, key)  # the compiled loop again, same key.
  a, b = jax.device_get(a), jax.device_get(b)
  n = fm.bind(params).tokenizer.tokens_per_image
  assert a.shape == (3, n) and a.min() >= 0 and a.max() < config.tokenizer.levels
  np.testing.assert_array_equal(a, b)
