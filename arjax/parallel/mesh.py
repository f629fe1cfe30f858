"""One mesh abstraction: a device mesh with axes ('data', 'fsdp', 'tensor') from the config,
logical-axis rules to NamedShardings, and multi-process initialisation.

Legend: P processes, n devices.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arjax.parallel.rules import LOGICAL_AXES, MESH_AXES

_log = logging.getLogger(__name__)


def mesh_shape(mesh_config, num_devices: int) -> Tuple[int, ...]:
  """Resolves -1 entries of {data, fsdp, tensor} against the device count."""
  sizes = {a: int(mesh_config[a]) for a in MESH_AXES}
  unknown = set(mesh_config.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axis {sorted(unknown)}; the mesh axes are {MESH_AXES}")
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1:
    raise ValueError(f"mesh: only one axis may be -1, got {free}")
  fixed = int(np.prod([s for s in sizes.values() if s != -1]))
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"mesh sizes must be positive or -1, got {sizes}")
  if free:
    if num_devices % fixed:
      raise ValueError(f"mesh {sizes}: {num_devices} devices are not divisible by the fixed "
                       f"axes' product {fixed}")
    sizes[free[0]] = num_devices // fixed
  total = int(np.prod(list(sizes.values())))
  if total != num_devices:
    raise ValueError(f"mesh {sizes} has {total} devices but {num_devices} are available")
  return tuple(sizes[a] for a in MESH_AXES)


def make_mesh(mesh_config, devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A Mesh with automatic (not Explicit) axis types, built directly from the devices."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:
    from jax.experimental import mesh_utils
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # fake CPU devices or odd topologies: plain reshape is fine there.
    grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, MESH_AXES)


def check_rules(rules) -> Dict[str, Any]:
  table = {}
  for entry in rules:
    if len(entry) != 2:
      raise ValueError(f"sharding rule {entry!r} is not a (logical axis, mesh axes) pair")
    name, target = entry
    targets = () if target is None else (target if isinstance(target, (tuple, list))
                                        else (target,))
    for t in targets:
      if t not in MESH_AXES:
        raise ValueError(f"sharding rule for {name!r} names mesh axis {t!r}; "
                         f"expected one of {MESH_AXES}")
    table[name] = tuple(targets) if len(targets) > 1 else (targets[0] if targets else None)
  return table


def logical_to_spec(axes: Optional[Sequence[Optional[str]]], rules) -> PartitionSpec:
  """('embed', 'mlp') -> PartitionSpec('fsdp', 'tensor') under `rules`; each mesh axis is used
  at most once per array (a later dimension asking for a used axis is replicated)."""
  if axes is None:
    return PartitionSpec()
  table = check_rules(rules)
  used, out = set(), []
  for name in axes:
    if name is None:
      out.append(None)
      continue
    if name not in table:
      raise ValueError(f"logical axis {name!r} has no sharding rule; rules cover "
                       f"{sorted(table)} (known logical axes: {LOGICAL_AXES})")
    target = table[name]
    ts = () if target is None else (target if isinstance(target, tuple) else (target,))
    ts = tuple(t for t in ts if t not in used)
    used.update(ts)
    out.append(None if not ts else (ts[0] if len(ts) == 1 else ts))
  return PartitionSpec(*out)


def named_sharding(mesh: Mesh, axes, rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, rules))


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
  return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def maybe_initialize_distributed() -> None:
  """Calls jax.distributed.initialize when launched as several processes.

  Recognised: ARJAX_COORDINATOR (host:port), ARJAX_NUM_PROCESSES, ARJAX_PROCESS_ID (set by
  `python -m arjax.launch`), or the cluster environments jax auto-detects (SLURM, TPU pods).
  """
  coordinator = os.environ.get("ARJAX_COORDINATOR")
  if coordinator:
    if os.environ.get("JAX_PLATFORMS", "") == "cpu" or jax.config.jax_platforms == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["ARJAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["ARJAX_PROCESS_ID"]))
    _log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
