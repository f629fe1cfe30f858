"""What the parity tests of converted checkpoints share: reading a committed fixture and building
the arjax model from its official state dict."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.core.functional import FunctionalModel
from arjax.models import build_model


def read_fixture(path):
  """{name: array} of a committed .npz fixture."""
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def state_dict(fx, dtype=None):
  """The official state dict stored under 'sd/' in a fixture (optionally cast)."""
  return {k[3:]: (v if dtype is None else v.astype(dtype))
          for k, v in fx.items() if k.startswith("sd/")}


def converted_model(sd, config, params_fn):
  """params_fn(sd, config) -> arjax params, checked leaf by leaf against the model's shapes ->
  dict(sd, config, fm, params, model)."""
  params = params_fn(sd, config)
  fm = FunctionalModel.abstract(lambda: build_model(config))
  jax.tree.map(lambda a, b: None if a.shape == b.shape else pytest.fail(f"{a.shape} {b.shape}"),
               params, fm.abstract_params)
  params = jax.tree.map(jnp.asarray, params)
  return dict(sd=sd, config=config, fm=fm, params=params, model=fm.bind(params))
