"""Checks of a layout before anything is allocated, and the crash-test fault hook.

Every check raises a ValueError that names the config fields and values involved, so a bad
mesh, rule table or batch size fails at start instead of deep inside jit or a collective:

  * `check_batch_divisible`: each global batch splits evenly over the data-parallel degree
    (the product of the mesh axes that the 'batch' rule names) and over the processes.
  * `check_fsdp_layout`: when `mesh.fsdp > 1` asks for FSDP, no large parameter may stay
    replicated over 'fsdp' (its whole copy, plus Adam's two, would sit on every device).
  * `check_experiment`: both of the above for an `arjax.train.loop.Experiment`.

`fault_point(phase, step)` is the hook the trainer calls at a few points so tests can SIGKILL
it at an exact moment (set ARJAX_FAULT_INJECT); it costs one environment lookup otherwise.
"""
from __future__ import annotations

import os
import signal
import time
from typing import Dict, Optional, Tuple

import jax
import numpy as np
from jax.sharding import Mesh

from arjax.parallel.mesh import logical_to_spec

# A parameter this large (bytes) must be sharded over 'fsdp' when FSDP is asked for. Norm
# scales and small tables may stay replicated: they cost little and sharding them buys nothing.
FSDP_MIN_BYTES = 1 << 20

FAULT_ENV = "ARJAX_FAULT_INJECT"


def _spec_axes(entry) -> Tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def data_parallel_degree(mesh: Mesh, rules) -> Tuple[int, Tuple[str, ...]]:
  """(number of batch shards, mesh axes the 'batch' logical axis maps to) under `rules`."""
  spec = logical_to_spec(("batch",), rules)
  axes = _spec_axes(spec[0]) if len(spec) else ()
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1, axes


def check_batch_divisible(batch_size: int, mesh: Mesh, rules, *, field: str = "train.batch_size",
                          process_count: Optional[int] = None) -> None:
  """Raises ValueError unless `batch_size` splits evenly over batch shards and processes."""
  degree, axes = data_parallel_degree(mesh, rules)
  if batch_size <= 0 or batch_size % degree:
    sizes = ", ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
    raise ValueError(
        f"{field}={batch_size} is not divisible by the data-parallel degree {degree} "
        f"(the 'batch' rule shards over {list(axes)}: {sizes}); use a multiple of {degree}")
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size % process_count:
    raise ValueError(f"{field}={batch_size} is not divisible by the {process_count} processes; "
                     f"each process reads {field} / processes examples")


def _path(path) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def check_fsdp_layout(abstract_params, axes_tree, mesh: Mesh, rules, *,
                      min_bytes: int = FSDP_MIN_BYTES) -> None:
  """Refuses a layout that keeps a parameter of >= `min_bytes` replicated over 'fsdp'.

  Only applies when the mesh's 'fsdp' axis has more than one device (FSDP was asked for).
  The error names every such parameter with its shape, logical axes and the rules they hit.
  """
  fsdp = mesh.shape.get("fsdp", 1)
  if fsdp <= 1:
    return
  from arjax.parallel.sharding import _Axes  # the opaque leaf type of logical_axes_tree.
  flat_axes = {_path(p): a.axes for p, a in jax.tree_util.tree_flatten_with_path(
      axes_tree, is_leaf=lambda x: isinstance(x, _Axes))[0]}
  table = {name: target for name, target in rules}
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    nbytes = int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    if nbytes < min_bytes:
      continue
    key = _path(path)
    axes = flat_axes.get(key)
    spec = logical_to_spec(axes, rules)
    used = {a for entry in spec for a in _spec_axes(entry)}
    if "fsdp" not in used:
      hit = ", ".join(f"{a} -> {table.get(a)!r}" for a in (axes or ()) if a is not None)
      bad.append(f"  {key} {list(leaf.shape)} {np.dtype(leaf.dtype)} ({nbytes / 2**20:.1f} MiB), "
                 f"logical axes {axes}: rules {hit or 'none'}")
  if bad:
    raise ValueError(
        f"mesh.fsdp={fsdp} asks for FSDP, but under config.sharding_rules {len(bad)} "
        f"parameter(s) of >= {min_bytes / 2**20:g} MiB stay replicated over 'fsdp' (every "
        f"device would hold all of each, and its optimizer state):\n" + "\n".join(bad) +
        "\nMap one of their logical axes to 'fsdp' (the default rule is ['embed', 'fsdp']) or "
        "set mesh.fsdp=1.")


def check_experiment(exp) -> None:
  """Layout checks for an `Experiment` (train and eval batch sizes, FSDP)."""
  c = exp.config
  check_batch_divisible(int(c.train.batch_size), exp.mesh, exp.rules, field="train.batch_size")
  check_batch_divisible(int(c.eval.batch_size), exp.mesh, exp.rules, field="eval.batch_size")
  check_fsdp_layout(exp.fm.abstract_params, exp.fm.axes, exp.mesh, exp.rules)


def parse_mesh(text: str) -> Dict[str, int]:
  """'data=16,fsdp=8' -> {'data': 16, 'fsdp': 8, 'tensor': 1}; unknown axes are an error."""
  from arjax.parallel.rules import MESH_AXES
  out = {a: 1 for a in MESH_AXES}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, value = item.partition("=")
    if not sep or name not in MESH_AXES:
      raise ValueError(f"--mesh item {item!r}: expected AXIS=SIZE with AXIS one of {MESH_AXES}")
    try:
      out[name] = int(value)
    except ValueError:
      raise ValueError(f"--mesh {name}={value!r}: the size must be an integer") from None
  return out


def fault_point(phase: str, step: int) -> None:
  """Crash-test hook: SIGKILLs this process when ARJAX_FAULT_INJECT="PHASE:STEP[:DELAY_S]".

  The trainer calls it with phase 'step' after dispatching step STEP and 'save' right after
  starting the (asynchronous) checkpoint of step STEP, so a test can kill it while Orbax is
  still writing. DELAY_S (optional) sleeps first, to land later inside the write.
  """
  spec = os.environ.get(FAULT_ENV)
  if not spec:
    return
  parts = spec.split(":")
  if len(parts) in (2, 3) and parts[0] == phase and parts[1] == str(step):
    if len(parts) == 3:
      time.sleep(float(parts[2]))
    os.kill(os.getpid(), signal.SIGKILL)
