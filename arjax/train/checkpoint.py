"""Orbax checkpoints: train state, data-iterator state and metadata saved together.

Resume order (documented in README): the latest complete checkpoint in `workdir/checkpoints`,
then `config.init_checkpoint`-style explicit restores by the caller, then scratch. Orbax writes
each step into a temporary directory and renames it when complete, so a crash mid-save never
leaves a checkpoint that `latest_step` would pick up. Restoring checks the saved parameter
and model-state shapes (model-state tensors named `model_state/...`) against the model first
and names every tensor that differs.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Optional, Tuple

import orbax.checkpoint as ocp

# The read side of the format (shape records, the shape check, finished steps) lives with the
# loader (arjax.loading), which must not import the trainer; re-exported here.
from arjax.loading import (CHECKPOINT_DIR, ITEM_NAMES, MODEL_STATE_PREFIX,  # noqa: F401
                           CheckpointMismatchError, check_shapes, complete_steps)
from arjax.loading import flat_shapes as _flat_shapes
from arjax.loading import saved_shapes as _saved_shapes

_log = logging.getLogger(__name__)


def _state_shapes(state) -> Dict[str, Tuple[list, str]]:
  """Shapes of parameters and (prefixed) model state: what a restore must agree on."""
  return {**_flat_shapes(state.params), **_flat_shapes(state.model_state, MODEL_STATE_PREFIX)}


# -- [scale] save failures (disk full, unwritable) ---------------------------------------------
class CheckpointSaveError(OSError):
  """A checkpoint could not be written; earlier complete checkpoints are left intact."""


def _reason(error: BaseException) -> str:
  """The OS-level reason in an Orbax/TensorStore exception chain, e.g. '[Errno 28] ...'."""
  seen, texts = set(), []
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno:
      return f"[Errno {error.errno}] {os.strerror(error.errno)}"
    texts.append(str(error))
    error = error.__cause__ or error.__context__
  for text in texts:
    for known in ("No space left on device", "Permission denied", "Read-only file system",
                  "Disk quota exceeded"):
      if known in text:
        return known
  return texts[0][:500] if texts else "unknown error"
# -- [/scale] ------------------------------------------------------------------------------------


class Checkpointer:

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=ITEM_NAMES)
    self._pending: Optional[int] = None  # [scale] step of the save that may still be writing.
    self._failed = False                 # [scale] a CheckpointSaveError was raised already.

  def _save_error(self, step: int, error: BaseException) -> CheckpointSaveError:  # [scale]
    self._pending, self._failed = None, True
    return CheckpointSaveError(
        f"saving checkpoint step {step} in {self.directory} failed: {_reason(error)}. "
        f"Complete checkpoints, intact and resumable: {complete_steps(self.directory) or 'none'}")

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: Dict[str, Any], meta: Dict[str, Any],
           *, force: bool = False) -> bool:
    meta = dict(meta, param_shapes=_flat_shapes(state.params),
                model_state_shapes=_flat_shapes(state.model_state))
    self.wait()  # [scale] an earlier asynchronous save's failure names that earlier step.
    if step in self.manager.all_steps():  # [scale] a restarted finished (or killed after its
      return False                        # final save) run: that step is on disk already.
    try:
      self._pending = step
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)), force=force)
    except Exception as e:  # pylint: disable=broad-except  # [scale] name step and reason.
      raise self._save_error(step, e) from e
    return saved

  def read_meta(self, step: int) -> Dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """abstract_state: TrainState of jax.ShapeDtypeStruct with the target shardings."""
    meta = self.read_meta(step)
    check_shapes(_saved_shapes(meta), _state_shapes(abstract_state), f"{self.directory}/{step}")
    carries_model_state = "model_state_shapes" in meta
    item = abstract_state if carries_model_state else _without_model_state(abstract_state)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(item), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    state = out["state"]
    if not carries_model_state:
      state = type(abstract_state)(**state, model_state={})
    return state, out["data"], out["meta"]

  def wait(self):
    try:  # [scale] a failed asynchronous save surfaces here or at the next save.
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if self._failed:  # already raised as a CheckpointSaveError: don't mask it.
        _log.warning("checkpoint save failure (reported above): %s", _reason(e))
        return
      raise self._save_error(self._pending, e) from e

  def close(self):
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception as e:  # pylint: disable=broad-except  # [scale] same failure, again.
        if not self._failed:
          raise
        _log.warning("checkpoint save failure (reported above): %s", _reason(e))


def _without_model_state(abstract_state) -> Dict[str, Any]:
  """The train state as a dict of its fields less `model_state`: the tree of a checkpoint
  written before model state was carried (the shape check has made sure the model has none)."""
  return {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
          if f.name != "model_state"}
