"""Test setup: 8 fake CPU devices for mesh tests, absl flags parsed for grain workers."""
import os

# Must happen before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


import pytest  # noqa: E402


@pytest.fixture
def no_implicit_transfers():
  """The test body runs under jax.transfer_guard("disallow"): an implicit host<->device transfer
  (a numpy array or Python scalar into a jitted function, float() of a device value) raises.
  For hot paths only (train step, sampler loops); explicit jax.device_put / device_get pass."""
  import jax
  with jax.transfer_guard("disallow"):
    yield
