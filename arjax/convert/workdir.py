"""Writing converted parameters as an arjax workdir (config.json + Orbax checkpoint, step 0)."""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional

import jax
import numpy as np

_log = logging.getLogger("arjax.convert")


def _check_tree(params: Dict, abstract: Dict) -> None:
  """Raises naming every tensor missing, extra or of another shape than the model's."""
  got = {jax.tree_util.keystr(p): np.shape(v)
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = {jax.tree_util.keystr(p): tuple(v.shape)
          for p, v in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
  problems += [f"extra {k} {got[k]}" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: converted {got[k]}, model {want[k]}" for k in sorted(set(got) & set(want))
               if got[k] != want[k]]
  if problems:
    raise ValueError("converted parameters do not fit the model: " + "; ".join(problems[:10]))


def write_workdir(config, params: Dict, workdir: str, source: Optional[str] = None) -> str:
  """Writes `params` (nested dict of arrays, the model's structure) as step 0 of `workdir`.

  The optimizer state is fresh, so training from the workdir fine-tunes the converted model.
  Refuses a workdir that already holds a checkpoint.
  """
  from arjax.train.checkpoint import Checkpointer
  from arjax.train.loop import Experiment, check_workdir
  from arjax.train.state import initial_state
  check_workdir(workdir)
  exp = Experiment(config, check_data=False)
  _check_tree(params, exp.fm.abstract_params)
  abstract, shardings = exp.abstract_state()
  ema = config.train.ema_decay > 0
  params = jax.tree.map(lambda v, a: np.asarray(v, a.dtype), params, exp.fm.abstract_params)
  # Converted weights are parameters; model state (a VQ EMA codebook's statistics) starts as
  # the model builds it.
  model_state = {}
  if exp.fm.has_model_state:
    from arjax.models import build_model
    from arjax.core.functional import FunctionalModel
    model_state = FunctionalModel(build_model(config, seed=config.seed)).initial_model_state()
  state = jax.jit(lambda p, s: initial_state(p, exp.tx, config.seed, ema, s),
                  out_shardings=shardings)(params, model_state)
  ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints, async_save=False)
  try:
    if ckpt.latest_step() is not None:
      raise FileExistsError(f"{ckpt.directory} already holds checkpoint "
                            f"{ckpt.latest_step()}: convert into an empty workdir")
    meta = {"config": json.loads(config.to_json_best_effort()), "converted_from": source}
    ckpt.save(0, state, {}, meta, force=True)
  finally:
    ckpt.close()
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  _log.info("wrote %s (%s parameters) from %s", workdir, f"{exp.fm.param_count():,}", source)
  return workdir
