"""Orbax checkpoints: train state, data-iterator state and metadata saved together.

Resume order (documented in README): the latest complete checkpoint in `workdir/checkpoints`,
then `config.init_checkpoint`-style explicit restores by the caller, then scratch. Orbax writes
each step into a temporary directory and renames it when complete, so a crash mid-save never
leaves a checkpoint that `latest_step` would pick up. Restoring checks the saved parameter
shapes against the model first and names every tensor that differs.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

_log = logging.getLogger(__name__)


def _flat_shapes(tree) -> Dict[str, Tuple[list, str]]:
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = [list(leaf.shape), str(np.dtype(leaf.dtype))]
  return out


class CheckpointMismatchError(ValueError):
  pass


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: Dict[str, Any], meta: Dict[str, Any],
           *, force: bool = False) -> bool:
    meta = dict(meta, param_shapes=_flat_shapes(state.params))
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: int) -> Dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """abstract_state: TrainState of jax.ShapeDtypeStruct with the target shardings."""
    meta = self.read_meta(step)
    check_shapes(meta.get("param_shapes", {}), _flat_shapes(abstract_state.params),
                 f"{self.directory}/{step}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return out["state"], out["data"], out["meta"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def check_shapes(saved: Dict[str, Any], expected: Dict[str, Any], where: str) -> None:
  """Raises CheckpointMismatchError naming every tensor whose shape or dtype differs."""
  fmt = lambda v: f"{list(v[0])} {v[1]}"
  problems = []
  for key in sorted(set(saved) | set(expected)):
    if key not in saved:
      problems.append(f"  {key}: missing in checkpoint (model expects {fmt(expected[key])})")
    elif key not in expected:
      problems.append(f"  {key}: in checkpoint {fmt(saved[key])} but not in the model")
    elif list(saved[key]) != list(expected[key]):
      problems.append(f"  {key}: checkpoint {fmt(saved[key])} vs model {fmt(expected[key])}")
  if problems:
    raise CheckpointMismatchError(
        f"checkpoint {where} does not match the model ({len(problems)} tensors differ):\n"
        + "\n".join(problems))
