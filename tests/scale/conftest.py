"""Shared fixtures of the scale tests: a persistent compilation cache and one reference run.

Compiling dominates these tests (a tiny step costs 5-15 s to compile on 2 cores, and every
subprocess would compile it again). A persistent compilation cache, shared by this process and
the subprocesses it starts, makes each program compile once. It is switched on for this package
only and switched off after it, so the rest of the suite is unaffected. The cache cannot change
results: it stores the executable XLA produced for the identical program.
"""
import json
import logging
import os
import sys

import jax
import numpy as np
import pytest

from tests.helpers import compile_cache_env, persistent_compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_CONFIG = os.path.join(ROOT, "tests", "scale", "run_config.py")


@pytest.fixture(scope="package")
def compile_cache(tmp_path_factory):
  with persistent_compile_cache(str(tmp_path_factory.mktemp("jax_cache"))) as path:
    yield path


def subprocess_env(cache_dir, **extra):
  """Environment for subprocesses: this repo importable, the shared compilation cache."""
  env = compile_cache_env(cache_dir, PYTHONPATH=ROOT, **extra)
  if "ARJAX_FAULT_INJECT" not in extra:
    env.pop("ARJAX_FAULT_INJECT", None)
  return env


def train_cmd(workdir, *overrides):
  return [sys.executable, "-m", "arjax.train", "--config", RUN_CONFIG, "--workdir", workdir,
          *overrides]


def read_metrics(workdir):
  """Every line of metrics.jsonl (a killed run may leave a truncated last line: skipped)."""
  rows = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        pass
  return rows


def losses(workdir):
  """{step: [loss, ...]}: every loss logged for the step, by every run in the workdir."""
  out = {}
  for r in read_metrics(workdir):
    if "loss" in r:
      out.setdefault(r["step"], []).append(r["loss"])
  return out


def restore(workdir, config, mesh=None, step=None):
  """The TrainState of a workdir's checkpoint (latest by default) on `mesh`, on the host."""
  from arjax.train.checkpoint import Checkpointer
  from arjax.train.loop import Experiment
  exp = Experiment(config, mesh=mesh)
  abstract, shardings = exp.abstract_state()
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    state, _, _ = ckpt.restore(ckpt.latest_step() if step is None else step, target)
  finally:
    ckpt.close()
  return state


class _Capture(logging.Handler):

  def __init__(self):
    super().__init__(logging.INFO)
    self.lines = []

  def emit(self, record):
    self.lines.append(record.getMessage())


@pytest.fixture(scope="package")
def reference(compile_cache, tmp_path_factory):
  """One uninterrupted in-process run of run_config.py on the 8 devices of this process.

  Returns workdir, config, losses {step: loss}, final params (host), the trainer's log lines.
  """
  from arjax.config import load_config
  from arjax.train.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = load_config(RUN_CONFIG)
  logger = logging.getLogger("arjax.train")
  capture, level = _Capture(), logger.level
  logger.addHandler(capture)
  logger.setLevel(logging.INFO)
  try:
    results = train_and_evaluate(config, workdir)
  finally:
    logger.removeHandler(capture)
    logger.setLevel(level)
  params = jax.device_get(restore(workdir, config).params)
  return {"workdir": workdir, "config": config, "results": results,
          "losses": {s: v[0] for s, v in losses(workdir).items()}, "params": params,
          "log": capture.lines}


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)
