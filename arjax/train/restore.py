"""Restoring a whole train state (parameters, optimizer state, EMA, model state) from a workdir,
through the trainer's Experiment: for tests and scripts that need the optimizer state or the
Experiment's evaluation methods. Inference needs neither: `arjax.load` (arjax.loading) reads
the parameters and model state only, without building an optimizer.
"""
from __future__ import annotations

from typing import Optional, Tuple

import jax

from arjax.loading import load_workdir_config, resolve_step
from arjax.train.checkpoint import Checkpointer
from arjax.train.loop import Experiment
from arjax.train.state import TrainState

__all__ = ["load_run", "load_workdir_config"]


def load_run(workdir: str, step: Optional[int] = None, check_data: bool = True
             ) -> Tuple[Experiment, TrainState, int]:
  """Returns (experiment, restored train state, step) of the latest (or given) checkpoint.

  check_data=False loads without the training data set (sampling only).
  """
  config = load_workdir_config(workdir)
  exp = Experiment(config, check_data=check_data)
  step = resolve_step(workdir, step)
  ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=False)
  try:
    abstract, shardings = exp.abstract_state()
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    state, _, _ = ckpt.restore(step, target)
  finally:
    ckpt.close()
  return exp, state, step
