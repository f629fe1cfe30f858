"""Flax NNX used functionally: split a model once, then run pure functions of plain params.

`FunctionalModel` keeps the graph definition and the non-parameter state (RNG streams) and
rebuilds the module inside a traced function from a nested dict of parameters. RNG streams are
reseeded from an explicit key each call, so every step is a pure function of
(params, batch, key) and a resumed run is bit-identical.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import jax
from flax import nnx

from arjax.parallel.sharding import logical_axes_tree

Params = Dict[str, Any]


class FunctionalModel:

  def __init__(self, model: nnx.Module):
    self.graphdef, params_state, self._rest = nnx.split(model, nnx.Param, ...)
    self._template = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params_state)
    self.axes = logical_axes_tree(params_state)
    self.abstract_params = nnx.to_pure_dict(self._template)
    self._params = nnx.to_pure_dict(params_state)

  @classmethod
  def abstract(cls, build: Callable[[], nnx.Module]) -> "FunctionalModel":
    """Builds the model under eval_shape: shapes and axes only, no allocation."""
    return cls(nnx.eval_shape(build))

  def initial_params(self) -> Params:
    return self._params

  def bind(self, params: Params, rng=None) -> nnx.Module:
    """A module carrying `params`; its RNG streams reseeded from `rng` if given."""
    state = jax.tree.map(lambda x: x, self._template)
    nnx.replace_by_pure_dict(state, params)
    rest = jax.tree.map(lambda x: x, self._rest)
    model = nnx.merge(self.graphdef, state, rest)
    if rng is not None:
      streams = {}
      for name, sub in zip(("dropout", "sample"), jax.random.split(rng, 2)):
        streams[name] = sub
      nnx.reseed(model, **streams)
    return model

  def param_count(self) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(self.abstract_params))
