"""The model registry: configs name a model by `config.model.name`.

Every registered builder is called as `builder(config, rngs=nnx.Rngs(...))` and returns an
`nnx.Module` that implements the `TrainableModel` protocol below, which is all the trainer
knows about a model.
"""
from __future__ import annotations

from typing import Any, Dict, Protocol, Tuple

import jax

from arjax.registry import Registry

MODELS: Registry = Registry("model")


class TrainableModel(Protocol):
  """What `arjax.train` needs from a model.

  `loss(batch, train=...)` returns (scalar mean loss, dict of scalar metrics). Randomness
  (dropout, class dropout, masking) comes from the model's own `nnx.Rngs` streams, which live
  in its state, so the functional train step threads them through split/merge.
  """

  def loss(self, batch: Dict[str, jax.Array], *, train: bool) -> Tuple[jax.Array, Dict[str, Any]]:
    ...


def build_model(config, *, seed: int = 0):
  """Builds the model named by `config.model.name` with freshly initialised parameters."""
  from flax import nnx
  builder = MODELS.get(config.model.name, field="model.name")
  return builder(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1, sample=seed + 2))
