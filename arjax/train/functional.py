"""Flax NNX used functionally: split a model once, then run pure functions of plain params.

`FunctionalModel` keeps the graph definition and the non-parameter state (RNG streams) and
rebuilds the module inside a traced function from a nested dict of parameters. RNG streams are
reseeded from an explicit key each call, so every step is a pure function of
(params, batch, key) and a resumed run is bit-identical.
"""
from __future__ import annotations

import contextlib

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
    return cls(abstract_module(build))

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


@contextlib.contextmanager
def _cheap_tracer_errors():
  # Under eval_shape, flax's RNG-counter update asks each traced counter for `.sharding`; jax
  # answers with an AttributeError whose message scans the whole jaxpr built so far, which makes
  # an abstract build quadratic in the number of parameters (RAR-XXL: 37 s instead of 3 s on a
  # 2-core CPU). The message is caught inside flax and never shown, so it is not built here.
  # A private jax attribute: where it does not exist, nothing changes.
  from jax._src.interpreters import partial_eval as pe
  tracer = getattr(pe, "DynamicJaxprTracer", None)
  old = getattr(tracer, "_origin_msg", None)
  if old is None:
    yield
    return
  tracer._origin_msg = lambda self: ""
  try:
    yield
  finally:
    tracer._origin_msg = old


def abstract_module(build: Callable[[], nnx.Module]) -> nnx.Module:
  """`nnx.eval_shape(build)`: the module with ShapeDtypeStruct leaves, nothing allocated."""
  with _cheap_tracer_errors():
    return nnx.eval_shape(build)
