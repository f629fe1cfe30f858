"""Shardings for model state, derived from the parameters' logical axes and the rules.

Parameters live as plain nested dicts (see `arjax.core.functional`); `logical_axes_tree` reads
each parameter's `logical_axes` metadata. Optimizer states (optax) mirror the parameter tree,
so their leaves inherit the sharding of the parameter whose path they end with.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arjax.parallel.mesh import logical_to_spec


def logical_axes_tree(params_state: nnx.State) -> Dict[str, Any]:
  """Nested dict (like `nnx.to_pure_dict(params_state)`) of logical-axes tuples (or None)."""
  def axes_of(v):
    meta = v.get_metadata() if hasattr(v, "get_metadata") else {}
    return _Axes(meta.get("logical_axes"))
  tree = jax.tree.map(axes_of, params_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


class _Axes:
  """Opaque leaf holding a tuple of axis names (tuples would be flattened as pytrees)."""

  def __init__(self, axes):
    self.axes = axes

  def __repr__(self):
    return f"Axes{self.axes}"


def _path_key(path) -> Tuple[str, ...]:
  out = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        out.append(str(getattr(p, attr)))
        break
    else:
      out.append(str(p))
  return tuple(out)


def param_specs(axes_tree, rules) -> Dict[str, Any]:
  return jax.tree.map(lambda a: logical_to_spec(a.axes, rules), axes_tree,
                      is_leaf=lambda x: isinstance(x, _Axes))


def state_shardings(tree, axes_tree, mesh: Mesh, rules):
  """NamedShardings for any pytree whose array leaves are parameters or mirror them.

  A leaf gets the sharding of the parameter whose path is a suffix of its path and whose shape
  matches (Adam's mu/nu, EMA copies); anything else (step counters, keys) is replicated.
  """
  specs = param_specs(axes_tree, rules)
  flat_specs = {_path_key(p): s for p, s in
                jax.tree_util.tree_flatten_with_path(
                    specs, is_leaf=lambda x: isinstance(x, PartitionSpec))[0]}
  max_len = max((len(k) for k in flat_specs), default=0)

  def pick(path, leaf):
    key = _path_key(path)
    ndim = getattr(leaf, "ndim", 0)
    for start in range(max(0, len(key) - max_len), len(key)):
      spec = flat_specs.get(key[start:])
      if spec is not None and len(spec) <= ndim:
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree_util.tree_map_with_path(pick, tree)
