"""The README's commands end to end with `smoke`: train -> sample -> evaluate, and inspect."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, check=True):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
  return proc


def test_train_sample_evaluate_smoke(tmp_path):
  workdir = str(tmp_path / "quick")
  run("arjax.train", "--config", "configs/quickstart.py:smoke", "--workdir", workdir)
  final = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert 0 < final["test_bits_per_dim"] < 3.0  # 8 levels: a uniform model has 3 bits/dim.
  assert os.path.isfile(final["sample_grid"])
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  assert steps[-1] == 6

  out = json.loads(run("arjax.sample", "--workdir", workdir, "--num", "12", "--cfg_scale", "1.5",
                       "--top_k", "4", "--seed", "3").stdout.strip().splitlines()[-1])
  npz = np.load(out["npz"])
  assert npz["images"].shape == (12, 14, 14, 1) and npz["images"].dtype == np.uint8
  np.testing.assert_array_equal(npz["labels"], np.arange(12) % 10)
  assert Image.open(out["png"]).size[0] > 14 * 10

  ev = json.loads(run("arjax.evaluate", "--workdir", workdir, "--num_examples", "64"
                      ).stdout.strip().splitlines()[-1])
  assert ev["step"] == 6 and ev["num_tokens"] == 64 * 196
  assert abs(ev["bits_per_dim"] - final["test_bits_per_dim"]) < 1e-5  # same 64 images, same params

  # Unknown field and wrong type fail at start, naming the field.
  bad = run("arjax.train", "--config", "configs/quickstart.py:smoke", "--workdir", workdir,
            "--config.train.no_such_field=1", check=False)
  assert bad.returncode != 0 and "no_such_field" in bad.stderr
  bad = run("arjax.train", "--config", "configs/quickstart.py:smoke", "--workdir", workdir,
            "--config.train.num_steps=abc", check=False)
  assert bad.returncode != 0 and "num_steps" in bad.stderr


def test_inspect_reports_parameters_without_allocating():
  out = json.loads(run("arjax.inspect", "--config", "configs/imagenet256/llamagen.py:size=XXL",
                       "--json").stdout)
  assert abs(out["params"] - 1.4e9) < 0.05e9
  assert out["forward_per_token"] > 2 * out["params"] * 0.9


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
  import signal
  import time
  workdir = str(tmp_path / "preempt")
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.Popen(
      [sys.executable, "-m", "arjax.train", "--config", "configs/quickstart.py:smoke",
       "--workdir", workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
       "--config.train.checkpoint_every=100000"],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  for line in proc.stdout:  # wait until training is under way
    if "step 3/100000" in line or time.time() > deadline:
      break
  proc.send_signal(signal.SIGTERM)
  rest = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, rest
  steps = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 100000
