"""Orbax checkpoints: train state, data-iterator state and metadata saved together.

Resume order (documented in README): the newest *intact* checkpoint in `workdir/checkpoints`,
then `config.init_checkpoint`-style explicit restores by the caller, then scratch. Orbax writes
each step into a temporary directory and renames it when complete, so a crash mid-save never
leaves a checkpoint that `latest_step` would pick up. Restoring checks the saved parameter
and model-state shapes (model-state tensors named `model_state/...`) against the model first
and names every tensor that differs.

Integrity (docs/reliability.md): every step carries `digests.json`, the size and sha256 of each
file Orbax wrote for it (array data, array metadata, the data-iterator and metadata JSON). It is
written by Orbax's post-finalization callback, i.e. inside the temporary directory after every
process has finished writing and before the rename, so a step either has complete digests or is
not a step. Restoring verifies them first; `restore_latest` falls back to the newest intact step
and moves corrupt newer ones aside. Steps written before digests existed restore with a warning.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
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


# -- integrity: per-file digests written inside each step, verified before restoring ------------
DIGESTS_FILE = "digests.json"
# Orbax rewrites these two after its post-finalization callback (the commit timestamp, the commit
# marker), so they cannot be digested there; restoring reads neither (checked: flipping, emptying
# or deleting them leaves a restore unchanged).
_WRITTEN_AFTER_DIGESTS = ("_CHECKPOINT_METADATA", "commit_success.txt")


class CheckpointCorruptError(ValueError):
  """A checkpoint step whose files differ from the digests written with it, or that cannot be
  read; the message names the step, the directory and every file that differs."""


def check_keep(keep) -> None:
  """`train.keep_checkpoints` must keep at least the checkpoint a run resumes from."""
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
    raise ValueError(f"train.keep_checkpoints={keep!r}; expected an integer >= 1 (how many of "
                     "the newest checkpoints to keep; 0 would delete every checkpoint)")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def file_digests(step_dir: str) -> Dict[str, List]:
  """{path relative to step_dir: [size in bytes, sha256 hex]} of every file Orbax wrote."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      if rel in _WRITTEN_AFTER_DIGESTS or rel.startswith(DIGESTS_FILE):
        continue
      out[rel] = [os.path.getsize(full), _sha256(full)]
  return out


def write_digests(step_dir: str) -> None:
  """Writes step_dir/digests.json atomically (temporary file, fsync, rename)."""
  record = {"format": 1, "algorithm": "sha256", "files": file_digests(step_dir)}
  tmp = os.path.join(step_dir, DIGESTS_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(step_dir, DIGESTS_FILE))


def verify_step(step_dir: str) -> Optional[List[str]]:
  """Checks a step's files against its digests.json.

  Returns None when the step has no digests (written before they existed), [] when every file
  matches, else one problem per file ('state/d/ab12...: empty (expected 57843 bytes)').
  Files not listed (Orbax's commit marker and timestamp) are not checked.
  """
  path = os.path.join(step_dir, DIGESTS_FILE)
  if not os.path.lexists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)["files"]
    files = {str(k): (int(v[0]), str(v[1])) for k, v in files.items()}
  except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
    return [f"{DIGESTS_FILE}: unreadable ({type(e).__name__}: {e})"]
  problems = []
  for rel, (size, digest) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      problems.append(f"{rel}: missing")
      continue
    actual = os.path.getsize(full)
    if actual != size:
      what = "empty" if actual == 0 else f"{actual} bytes"
      problems.append(f"{rel}: {what} (expected {size} bytes)")
    elif _sha256(full) != digest:
      problems.append(f"{rel}: content differs from its sha256 digest")
  return problems
# -- [/integrity] -------------------------------------------------------------------------------


class Checkpointer:
  """Orbax CheckpointManager over workdir/checkpoints with verified steps.

  Saves always go through Orbax's asynchronous checkpointer (async_save=False waits for each save
  to finish before returning), so every step gets its digests from the post-finalization
  callback. Directories are created synchronously: an unwritable directory fails `save()` itself
  instead of leaving non-daemon threads waiting forever for a directory that never appears.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    check_keep(keep)
    self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
    if os.path.lexists(self.directory) and not os.path.isdir(self.directory):
      raise CheckpointSaveError(f"checkpoint directory {self.directory} exists and is not a "
                                "directory: move it away or choose another workdir")
    self.async_save = async_save
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=True,
        async_options=ocp.options.AsyncOptions(create_directories_asynchronously=False,
                                               post_finalization_callback=self._write_digests))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=ITEM_NAMES)
    self._pending: Optional[int] = None  # [scale] step of the save that may still be writing.
    self._failed = False                 # [scale] a CheckpointSaveError was raised already.

  def _write_digests(self):
    """Orbax's post-finalization callback: runs on the primary process once every process has
    written the step, in the step's temporary directory, before the rename that completes it."""
    if self._pending is None:  # `manager.save` called directly, bypassing `save`: no digests,
      _log.warning("a step saved through Checkpointer.manager directly gets no %s",  # so it
                   DIGESTS_FILE)                                     # restores unverified.
      return
    tmp = os.path.join(self.directory, f"{self._pending}{ocp.path.atomicity_types.TMP_DIR_SUFFIX}")
    if not os.path.isdir(tmp):  # an Orbax layout change must fail the save, not skip digests.
      raise FileNotFoundError(f"temporary checkpoint directory {tmp} not found for digests")
    write_digests(tmp)

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

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
    if not self.async_save:
      self.wait()
    return saved

  def read_meta(self, step: int) -> Dict[str, Any]:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def verify(self, step: int) -> bool:
    """Checks step's files against its digests; True when verified, False when the step has
    no digests (warned: written before they existed). Raises CheckpointCorruptError naming
    every file that differs. With several processes, process 0 reads the files and the others
    follow its verdict, so all restore the same step."""
    where = f"checkpoint step {step} in {self.directory}"
    problems = verify_step(self.step_dir(step)) if jax.process_index() == 0 else []
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      code = 0 if problems is None else (2 if problems else 1)
      code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
      if jax.process_index() != 0:
        problems = None if code == 0 else (["see process 0's log"] if code == 2 else [])
    if problems is None:
      _log.warning("%s has no %s (written before checkpoints carried digests): restoring it "
                   "unverified", where, DIGESTS_FILE)
      return False
    if problems:
      raise CheckpointCorruptError(f"{where} is corrupt: {'; '.join(problems)}")
    return True

  def restore(self, step: int, abstract_state) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    """abstract_state: TrainState of jax.ShapeDtypeStruct with the target shardings.

    Verifies the step's digests first (CheckpointCorruptError names the files that differ).
    A step without digests that Orbax cannot read raises CheckpointCorruptError too."""
    verified = self.verify(step)
    try:
      meta = self.read_meta(step)
    except Exception as e:  # pylint: disable=broad-except
      if verified:
        raise
      raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} (unverified) "
                                   f"cannot be read: {_one_line(e)}") from e
    check_shapes(_saved_shapes(meta), _state_shapes(abstract_state), f"{self.directory}/{step}")
    carries_model_state = "model_state_shapes" in meta
    item = abstract_state if carries_model_state else _without_model_state(abstract_state)
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(item), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      if verified:  # the files are as written: not corruption, keep Orbax's own error.
        raise
      raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} (unverified) "
                                   f"cannot be read: {_one_line(e)}") from e
    state = out["state"]
    if not carries_model_state:
      state = type(abstract_state)(**state, model_state={})
    return state, out["data"], out["meta"]

  def restore_latest(self, abstract_state) -> Optional[Tuple[int, Any, Dict[str, Any]]]:
    """(step, state, data_state) of the newest intact step, or None when there is no step.

    A corrupt step is logged (one line naming its files) and skipped; steps newer than the one
    restored are moved aside to STEP.corrupt (kept for inspection, and out of the way of the
    saves that will write those steps again). Raises CheckpointCorruptError naming the
    directory when steps exist but none is intact: never a silent start from scratch.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      return None
    corrupt = []
    for step in steps:
      try:
        state, data, _ = self.restore(step, abstract_state)
      except CheckpointCorruptError as e:
        _log.error("%s", e)
        corrupt.append(step)
        continue
      if corrupt:
        moved = self._move_aside(corrupt)
        _log.warning("resuming from step %d, the newest intact checkpoint in %s (corrupt newer "
                     "steps moved aside: %s)", step, self.directory, ", ".join(moved))
      return step, state, data
    raise CheckpointCorruptError(
        f"no intact checkpoint in {self.directory}: steps {sorted(corrupt)} are corrupt (files "
        "named above); refusing to start from scratch over them: move the directory away to "
        "start a new run")

  def _move_aside(self, steps: List[int]) -> List[str]:
    names = []
    for step in steps:
      name = f"{step}.corrupt"
      if os.path.lexists(os.path.join(self.directory, name)):
        name = f"{step}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
      names.append(name)
      if jax.process_index() == 0:
        os.replace(self.step_dir(step), os.path.join(self.directory, name))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("arjax_checkpoint_move_aside")
    self.manager.reload()
    return names

  def wait(self):
    try:  # [scale] a failed asynchronous save surfaces here or at the next save.
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if self._failed:  # already raised as a CheckpointSaveError: don't mask it.
        _log.warning("checkpoint save failure (reported above): %s", _reason(e))
        return
      raise self._save_error(self._pending, e) from e
    self._pending = None  # finished: the digest callback belongs to no step until the next save.

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


def _one_line(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}"


def _without_model_state(abstract_state) -> Dict[str, Any]:
  """The train state as a dict of its fields less `model_state`: the tree of a checkpoint
  written before model state was carried (the shape check has made sure the model has none)."""
  return {f.name: getattr(abstract_state, f.name) for f in dataclasses.fields(abstract_state)
          if f.name != "model_state"}
