"""`arjax.load`: a trained run's evaluation variables without the trainer.

The loaded variables must equal, bit for bit, what the trainer evaluates with
(`Experiment.eval_params` of the fully restored train state), here with an EMA so that the
parameters and their average differ; loading must import no part of `arjax.train` and build no
optimizer.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import arjax
from arjax import loading
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  from arjax.train.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("load") / "run")
  config = tiny_config(train__num_steps=2, train__ema_decay=0.5, train__lr=1e-2)
  train_and_evaluate(config, workdir)
  return workdir


def _leaves(tree):
  return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_load_equals_the_trainers_eval_params(run):
  from arjax.train.restore import load_run
  exp, state, step = load_run(run, check_data=False)
  want = _leaves(exp.eval_params(state))
  fm, variables, config = arjax.load(run)
  got = _leaves(variables)
  assert step == 2 and sorted(got) == sorted(want) and len(got) > 10
  for k in want:
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)
    assert got[k].sharding == want[k].sharding, k
  # The EMA is what was loaded: it differs from the raw parameters after two steps.
  raw = _leaves(state.params)
  assert any(not np.array_equal(np.asarray(raw[k]), np.asarray(want[k])) for k in want)
  assert config.train.ema_decay == 0.5 and fm.param_count() == exp.fm.param_count()
  # The loaded model runs: its test loss equals the trainer's on the same batch.
  batch = {"tokens": np.zeros((2, 49), np.int32), "label": np.array([1, 2], np.int32)}
  loss = lambda f, v: f.bind(v).loss(batch, train=False)[0]
  assert float(loss(fm, variables)) == float(loss(exp.fm, exp.eval_params(state)))


def test_load_names_a_missing_step_and_workdir(run, tmp_path):
  assert loading.resolve_step(run) == 2 and loading.resolve_step(run, 2) == 2
  with pytest.raises(FileNotFoundError, match=r"checkpoint step 1 not in .*complete steps: \[2\]"):
    arjax.load(run, step=1)
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    arjax.load(str(tmp_path / "nothing"))


def test_load_imports_no_trainer_and_builds_no_optimizer(run):
  """In a fresh process (the test process has the trainer loaded already): after arjax.load no
  `arjax.train` module is loaded, and an optax optimizer factory that raises is never hit."""
  code = f"""
import json, sys
import optax
def refuse(*a, **k):
  raise AssertionError("an optimizer was built")
for name in ("adamw", "adam", "sgd", "chain"):
  setattr(optax, name, refuse)
import arjax
fm, variables, config = arjax.load({run!r})
print(json.dumps({{"train": sorted(m for m in sys.modules if m.startswith("arjax.train")),
                  "orbax": "orbax.checkpoint" in sys.modules,
                  "params": fm.param_count()}}))
"""
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])
  assert got["train"] == [] and got["orbax"] and got["params"] > 0
