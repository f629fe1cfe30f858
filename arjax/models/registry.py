"""The model registry: configs name a model by `config.model.name`.

Every registered builder is called as `builder(config, rngs=nnx.Rngs(...))` and returns an
`nnx.Module` that implements the `TrainableModel` protocol below, which is all the trainer
knows about a model. Every model registers the fields it reads from `config.model`
(`MODELS.register(name, fields=...)`; `GeneratorFields` is the generators' shared base).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Protocol, Tuple

import jax

from arjax.nn.transformer import TransformerConfig
from arjax.registry import Registry, read_fields

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


@dataclasses.dataclass(frozen=True)
class GeneratorFields:
  """`config.model` of the class-conditional generators (raster_ar; ordered_ar adds its own).
  Sub-nodes: `model.backbone` (the fields of TransformerConfig) and `model.head` (the head's
  own declared fields, completed through arjax.config.PARTS)."""
  SUBNODES = {"backbone": TransformerConfig, "head": None}
  num_classes: int = 10           # class-conditional; index num_classes is the null class.
  class_dropout: float = 0.1      # probability of the null class in training (for CFG).
  token_dropout: float = 0.0      # dropout on input embeddings.


def model_fields(fields_cls, config):
  """The fields the model `config.model.name` declares (`fields_cls`), read from config.model."""
  m = config.model
  return read_fields(fields_cls, m, f"model {m.name!r} (config.model)")
