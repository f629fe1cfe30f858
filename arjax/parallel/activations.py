"""Logical-axis sharding constraints on activations.

Parameters carry logical axes; activations need them too. Without a constraint, XLA's SPMD
partitioner propagates the FSDP layout of the embedding table ('embed' split over 'fsdp') into
the hidden states instead of the batch split over ('data', 'fsdp'), and every device then holds
the activations of its whole FSDP group (measured in docs/scaling.md: LlamaGen-B at fsdp=8 had
5.8x the temporaries of data=8). MaxText's fix, used here: constrain hidden states to
('batch', 'length', 'embed') at block boundaries.

Model code calls `constrain(x, ('batch', 'length', 'embed'))` and never names a mesh axis. The
constraint applies only while a step is traced under `activation_sharding(mesh, rules)` (the
trainer wraps its train and eval steps); elsewhere (notebooks, samplers, tests on one device) it
is the identity.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from typing import Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding

from arjax.parallel.mesh import logical_to_spec

_state = threading.local()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """Within this context, `constrain` pins activations to `rules` on `mesh` (trace time)."""
  previous = getattr(_state, "current", None)
  _state.current = (mesh, tuple(tuple(r) for r in rules))
  try:
    yield
  finally:
    _state.current = previous


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
  """x [..] with one logical axis name (or None) per dimension -> x, sharding-constrained."""
  current = getattr(_state, "current", None)
  if current is None:
    return x
  mesh, rules = current
  if len(axes) != x.ndim:
    raise ValueError(f"constrain: {len(axes)} logical axes {tuple(axes)} for an array of "
                     f"shape {x.shape}")
  spec = logical_to_spec(axes, rules)
  # A dimension that the mesh axes do not divide (e.g. a batch of 1 while decoding) stays
  # replicated rather than failing: the constraint is a layout hint, not a requirement.
  sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
  parts = []
  for dim, p in zip(x.shape, tuple(spec) + (None,) * (x.ndim - len(spec))):
    names = () if p is None else (p if isinstance(p, tuple) else (p,))
    n = 1
    for name in names:
      n *= sizes[name]
    parts.append(p if n > 1 and dim % n == 0 else None)
  if all(p is None for p in parts):
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, jax.sharding.PartitionSpec(*parts)))


def with_activation_sharding(fn, mesh: Mesh, rules):
  """Wraps `fn` so that tracing it (under jit) applies the activation constraints."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)

  return wrapped
