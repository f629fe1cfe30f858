"""Shape and dtype checks of what a user hands a public function, with chex.

The chex asserts read only static shapes and dtypes, so under `jax.jit` they run once, when the
function is traced, and cost nothing per call. A failure is the one-line ValueError the entry
points print (`error: ...`, arjax.cli): it names the function, the argument, the shape and dtype
expected and the ones given, instead of chex's AssertionError.

Shapes are tuples of ints, None (any size) and at most one Ellipsis (any number of axes).
"""
from __future__ import annotations

from typing import Optional, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

# A dtype kind -> what chex.assert_type matches (any width) and how a message names it.
_KINDS = {"int": (int, "an integer dtype"), "float": (float, "a floating dtype"),
          "bool": (bool, "bool")}


def _shape_text(shape: Sequence) -> str:
  return "[" + ", ".join("..." if s is Ellipsis else "*" if s is None else str(s)
                         for s in shape) + "]"


def check_array(x, name: str, where: str, *, shape: Optional[Sequence] = None,
                rank: Optional[int] = None, kind: Optional[str] = None,
                legend: str = "") -> None:
  """Raises ValueError '{where}: {name} must be {shape} of {kind}{legend}, got [..] of dtype'
  unless x (a jax or numpy array, or a tracer) has that shape, rank and dtype kind ('int',
  'float', 'bool'). `legend`: what the shape's letters mean, e.g. ' (B=4 labels)'."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    raise ValueError(f"{where}: {name} must be an array, got {type(x).__name__}")
  try:
    if rank is not None:
      chex.assert_rank(x, rank)
    if shape is not None:
      chex.assert_shape(x, tuple(shape))
    if kind is not None:
      chex.assert_type(x, _KINDS[kind][0])
  except AssertionError:
    want = []
    if shape is not None:
      want.append(_shape_text(shape))
    elif rank is not None:
      want.append(f"of rank {rank}")
    if kind is not None:
      want.append(("of " if shape is not None else "with " if rank is not None else "of ")
                  + _KINDS[kind][1])
    raise ValueError(f"{where}: {name} must be {' '.join(want)}{legend}, got "
                     f"{list(x.shape)} of {x.dtype}") from None


def check_key(key, name: str, where: str) -> None:
  """A PRNG key: a typed key array of shape [] or a raw uint32 [2] key (jax.random.key /
  jax.random.PRNGKey); one line otherwise."""
  dtype = getattr(key, "dtype", None)
  if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
    ok = key.ndim == 0
  else:
    ok = dtype is not None and key.shape == (2,) and dtype == np.uint32
  if not ok:
    got = (f"{list(key.shape)} of {dtype}" if dtype is not None else type(key).__name__)
    raise ValueError(f"{where}: {name} must be one PRNG key (jax.random.key(seed) or "
                     f"jax.random.PRNGKey(seed)), got {got}")
