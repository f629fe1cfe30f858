"""The README's commands end to end with `smoke`: train -> sample -> evaluate, and inspect."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import compile_cache_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """A persistent compilation cache shared by this module's subprocesses: a program that the
  trainer compiled (the evaluation step, the initialisation) is loaded by the next command."""
  return str(tmp_path_factory.mktemp("jax_cache"))


def run(*args, check=True, cache=None):
  env = compile_cache_env(cache, PYTHONPATH=ROOT) if cache else dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def test_train_sample_evaluate_smoke(tmp_path, cache_dir, capsys):
  workdir = str(tmp_path / "quick")
  run("arjax.train", "--config", "configs/quickstart.py:smoke", "--workdir", workdir,
      cache=cache_dir)
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert 0 < final["test_bits_per_dim"] < 3.0  # 8 levels: a uniform model has 3 bits/dim.
  assert os.path.isfile(final["sample_grid"])
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == 6

  out = json.loads(run("arjax.sample", "--workdir", workdir, "--num", "12", "--cfg_scale", "1.5",
                       "--top_k", "4", "--seed", "3", cache=cache_dir
                       ).stdout.strip().splitlines()[-1])
  npz = np.load(out["npz"])
  assert npz["images"].shape == (12, 14, 14, 1) and npz["images"].dtype == np.uint8
  np.testing.assert_array_equal(npz["labels"], np.arange(12) % 10)
  assert Image.open(out["png"]).size[0] > 14 * 10

  ev = json.loads(run("arjax.evaluate", "--workdir", workdir, "--num_examples", "64",
                      cache=cache_dir).stdout.strip().splitlines()[-1])
  assert ev["step"] == 6 and ev["num_tokens"] == 64 * 196
  assert abs(ev["bits_per_dim"] - final["test_bits_per_dim"]) < 1e-5  # same 64 images, same params

  # Unknown field and wrong type fail at start, naming the field: what `python -m arjax.train`
  # runs (its __main__: sys.exit(cli.run(main))), in this process (a subprocess would only add
  # the interpreter's start and imports; the exit code is cli.run's return value).
  from arjax import cli
  from arjax.train.__main__ import main as train_main
  capsys.readouterr()
  for field, override in (("no_such_field", "--config.train.no_such_field=1"),
                          ("num_steps", "--config.train.num_steps=abc")):
    rc = cli.run(train_main, ["--config", "configs/quickstart.py:smoke", "--workdir", workdir,
                              override])
    err = capsys.readouterr().err
    assert rc != 0 and field in err, (rc, err)


def test_inspect_reports_parameters_without_allocating():
  out = json.loads(run("arjax.inspect", "--config", "configs/imagenet256/llamagen.py:size=XXL",
                       "--json").stdout)
  assert abs(out["params"] - 1.4e9) < 0.05e9
  assert out["forward_per_token"] > 2 * out["params"] * 0.9


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path, cache_dir):
  import signal
  import time
  workdir = str(tmp_path / "preempt")
  proc = subprocess.Popen(
      [sys.executable, "-m", "arjax.train", "--config", "configs/quickstart.py:smoke",
       "--workdir", workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
       "--config.train.checkpoint_every=100000"],
      cwd=ROOT, env=compile_cache_env(cache_dir, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  for line in proc.stdout:  # wait until training is under way
    if "step 3/100000" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, rest
  steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 100000
