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


def build_model(config, *, seed: int = 0, tokenizer=None):
  """Builds the model named by `config.model.name` with freshly initialised parameters.

  `tokenizer`: a tokenizer to use instead of the one the config builds, for a generator that
  decodes through a trained tokenizer (e.g. `arjax.loading.generator_tokenizer(config)`, the
  'cached' tokenizer with a frozen autoencoder handed in by the entry point). It must have the
  vocabulary, grid and token count of the config's tokenizer, which sized the model; it is a
  plain object, not a module, so its frozen parameters are not the model's parameters.
  """
  from flax import nnx
  builder = MODELS.get(config.model.name, field="model.name")
  model = builder(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1, sample=seed + 2))
  if tokenizer is not None:
    built = getattr(model, "tokenizer", None)
    if built is None:
      raise ValueError(f"build_model: model {config.model.name!r} has no tokenizer to replace")
    for field in ("vocab_size", "grid", "tokens_per_image"):
      want, got = getattr(built, field), getattr(tokenizer, field, None)
      if (tuple(want) if isinstance(want, (tuple, list)) else want) != (
          tuple(got) if isinstance(got, (tuple, list)) else got):
        raise ValueError(f"build_model: the tokenizer handed in has {field}={got} but the "
                         f"config's tokenizer {config.tokenizer.name!r} has {field}={want}")
    model.tokenizer = tokenizer
  return model
