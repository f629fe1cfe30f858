"""Flax NNX used functionally: split a model once, then run pure functions of plain dicts.

`FunctionalModel` splits a model into three parts:

  * parameters (`nnx.Param`): what the optimizer trains;
  * model state: every other variable except RNG streams (`nnx.BatchStat`, the VQ quantizer's
    `EMACodebook`), which a forward pass with train=True may update in place and which the
    trainer carries from step to step beside the parameters (`TrainState.model_state`);
  * the rest (RNG streams and counters), frozen: streams are reseeded from an explicit key each
    call.

Parameters and model state travel as nested pure dicts (`nnx.to_pure_dict`) at disjoint paths,
so every step is a pure function of (params, model_state, batch, key) and a resumed run is
bit-identical. Evaluation code gets one dict with both merged (`merge_model_state`, what
`Experiment.eval_params` returns); `bind` splits it again, so call sites that evaluate a model
pass one tree.
"""
from __future__ import annotations

import contextlib

from typing import Any, Callable, Dict, Optional, Tuple

import chex
import jax
from flax import nnx, traverse_util

from arjax.core.checks import check_array, check_key
from arjax.parallel.sharding import logical_axes_tree

Params = Dict[str, Any]

# Model state: variables that are neither trained by the optimizer nor RNG streams/counters.
MODEL_STATE = nnx.All(nnx.Not(nnx.Param), nnx.Not(nnx.RngState))


def _key(path: Tuple) -> Tuple[str, ...]:
  # Restored checkpoints may spell list indices as strings: compare paths as strings.
  return tuple(str(k) for k in path)


def _abstract(state: nnx.State) -> nnx.State:
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


class FunctionalModel:

  def __init__(self, model: nnx.Module):
    self.graphdef, params_state, model_state, self._rest = nnx.split(
        model, nnx.Param, MODEL_STATE, ...)
    self._template = _abstract(params_state)
    self._state_initial = model_state
    self.abstract_params = nnx.to_pure_dict(self._template)
    self.abstract_model_state = nnx.to_pure_dict(_abstract(model_state))
    self._params = nnx.to_pure_dict(params_state)
    self._model_state = nnx.to_pure_dict(model_state)
    self._state_paths = {_key(k) for k in traverse_util.flatten_dict(self._model_state)}
    # Logical axes of parameters and model state (disjoint paths, one tree): shardings of
    # either are looked up by path (arjax.parallel.state_shardings).
    self.axes = logical_axes_tree(params_state)
    if self._state_paths:
      self.axes = _merge(self.axes, logical_axes_tree(model_state))

  @classmethod
  def abstract(cls, build: Callable[[], nnx.Module]) -> "FunctionalModel":
    """Builds the model under eval_shape: shapes and axes only, no allocation."""
    return cls(abstract_module(build))

  def initial_params(self) -> Params:
    return self._params

  def initial_model_state(self) -> Params:
    """Model state as built ({} for a model without any)."""
    return self._model_state

  @property
  def has_model_state(self) -> bool:
    return bool(self._state_paths)

  # -- evaluation variables: params with the model state merged in -----------------------------
  def merge_model_state(self, params: Params, model_state: Params) -> Params:
    """One nested dict holding both (their paths are disjoint); `bind` takes it."""
    return _merge(params, model_state) if model_state else params

  def split_model_state(self, variables: Params) -> Tuple[Params, Params]:
    """Inverse of `merge_model_state`: (params, model state found in `variables`)."""
    if not self._state_paths:
      return variables, {}
    flat = traverse_util.flatten_dict(variables)
    state = {k: v for k, v in flat.items() if _key(k) in self._state_paths}
    params = {k: v for k, v in flat.items() if _key(k) not in self._state_paths}
    return traverse_util.unflatten_dict(params), traverse_util.unflatten_dict(state)

  # -- modules ----------------------------------------------------------------------------------
  def bind(self, params: Params, rng=None, model_state: Optional[Params] = None) -> nnx.Module:
    """A module carrying `params` and `model_state`; its RNG streams reseeded from `rng`.

    `params` may hold the model state merged in (`Experiment.eval_params`); an explicit
    `model_state` wins. Model state given nowhere takes its initial (as built) values.
    """
    params, merged = self.split_model_state(params)
    model_state = merged if model_state is None else model_state
    self.check_params(params)
    if rng is not None:
      check_key(rng, "rng", "FunctionalModel.bind")
    state = jax.tree.map(lambda x: x, self._template)
    nnx.replace_by_pure_dict(state, params)
    carried = jax.tree.map(lambda x: x, self._state_initial)
    if model_state:
      nnx.replace_by_pure_dict(carried, model_state)
    rest = jax.tree.map(lambda x: x, self._rest)
    model = nnx.merge(self.graphdef, state, carried, rest)
    if rng is not None:
      streams = {}
      for name, sub in zip(("dropout", "sample"), jax.random.split(rng, 2)):
        streams[name] = sub
      nnx.reseed(model, **streams)
    return model

  def check_params(self, params: Params, where: str = "FunctionalModel.bind") -> None:
    """Every parameter present at its built shape (chex asserts on static shapes: under jit they
    run when traced). One ValueError line naming the first missing, unknown or misshapen path."""
    if not isinstance(params, dict):
      raise ValueError(f"{where}: params must be a nested dict of arrays (fm.initial_params() "
                       f"or a checkpoint's), got {type(params).__name__}")
    have = {_key(k): v for k, v in traverse_util.flatten_dict(params).items()}
    want = {_key(k): v for k, v in traverse_util.flatten_dict(self.abstract_params).items()}
    missing = sorted(set(want) - set(have))
    unknown = sorted(set(have) - set(want))
    if missing or unknown:
      name = "/".join((missing or unknown)[0])
      raise ValueError(f"{where}: params {'lack' if missing else 'hold an unknown'} parameter "
                       f"{name!r} ({len(missing)} missing, {len(unknown)} unknown of "
                       f"{len(want)})")
    try:  # one chex call over the tree (cheaper than one per leaf: bind runs outside jit too).
      chex.assert_trees_all_equal_shapes(
          [have[k] for k in sorted(want)], [want[k] for k in sorted(want)])
    except AssertionError:
      for path in sorted(want):  # the first misshapen parameter, as one line.
        check_array(have[path], f"parameter {'/'.join(path)!r}", where,
                    shape=want[path].shape, legend=" (as the model was built)")
      raise

  def model_state_of(self, model: nnx.Module) -> Params:
    """The model state of a bound module (after a forward pass that updated it)."""
    if not self._state_paths:
      return {}
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, MODEL_STATE)))
    # Only the variables present at build time: a forward pass may add others (sown values).
    return traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if _key(k) in self._state_paths})

  def param_count(self) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(self.abstract_params))


def _merge(a: Dict, b: Dict) -> Dict:
  """Nested dicts with disjoint leaf paths -> one nested dict."""
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
  return out


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
