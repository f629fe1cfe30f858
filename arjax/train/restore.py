"""Loading a trained run from its workdir (for sampling, evaluation and notebooks)."""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import jax
import ml_collections

from arjax.config import upgrade_saved
from arjax.train.checkpoint import Checkpointer
from arjax.train.loop import Experiment
from arjax.train.state import TrainState


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of an arjax.train run?")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  return upgrade_saved(config)  # runs saved before the parts declared their fields.


def load_run(workdir: str, step: Optional[int] = None, check_data: bool = True
             ) -> Tuple[Experiment, TrainState, int]:
  """Returns (experiment, restored train state, step) of the latest (or given) checkpoint.

  check_data=False loads without the training data set (sampling only).
  """
  config = load_workdir_config(workdir)
  exp = Experiment(config, check_data=check_data)
  ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt.directory}")
    abstract, shardings = exp.abstract_state()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    state, _, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return exp, state, step
