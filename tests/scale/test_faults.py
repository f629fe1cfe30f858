"""Crash safety with injected faults: SIGKILL at random moments (also while an asynchronous
checkpoint is being written), NaN/Inf steps, a full disk at save time. Every recovery is checked
against the uninterrupted reference run, bit for bit (same seed, same mesh, CPU)."""
import contextlib
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from arjax.config import load_config
from arjax.train.checkpoint import CheckpointSaveError, complete_steps
from arjax.train.loop import NonFiniteError, train_and_evaluate
from tests.scale.conftest import (RUN_CONFIG, ROOT, assert_trees_equal, losses, read_metrics,
                                  restore, subprocess_env, train_cmd)

# Printed on failure; set ARJAX_CRASH_SEED to replay a failing draw.
SEED = int(os.environ.get("ARJAX_CRASH_SEED", random.SystemRandom().randrange(10_000)))


KILL_RUN_STEPS = 12  # the crash-test run: run_config.py for 12 steps (a checkpoint after each).
# Evaluated by test bits/dim alone (compared below); no sample grid, whose sampler compile and
# run added to the reference and to the final run without being compared.
KILL_RUN_CONFIG = RUN_CONFIG + ":no_grid"
# Each kill is one more trainer subprocess (interpreter, imports, restore: most of the test's
# time). Three kills, one of each kind in a random order, cover every kind in every run (ten
# kinds drawn freely missed one kind in ~5% of runs); where they land is still drawn at random,
# and two of them land in resumed runs. A multiple of 3 gives each kind that many kills.
KILL_PHASES = ("step", "save", "external")
NUM_KILLS = 3


def _run_until_killed(cmd, env, *, kill_after_step=None, delay=0.0, timeout=300):
  """Runs the trainer; with kill_after_step, SIGKILLs it `delay` s after that step's log line."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out = []
  deadline = time.time() + timeout
  for line in proc.stdout:
    out.append(line)
    if kill_after_step is not None and f"step {kill_after_step}/{KILL_RUN_STEPS}" in line:
      time.sleep(delay)
      proc.send_signal(signal.SIGKILL)
      break
    if time.time() > deadline:
      proc.kill()
      break
  rest, _ = proc.communicate(timeout=timeout)
  return proc.returncode, "".join(out) + (rest or "")


def _resumed_from(log):
  m = re.search(r"resumed from \S+/(\d+)", log)
  return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def long_reference(compile_cache, tmp_path_factory):
  """The uninterrupted 12-step run (losses per step, final params, test bits/dim)."""
  workdir = str(tmp_path_factory.mktemp("long_reference"))
  config = load_config(KILL_RUN_CONFIG, [f"train.num_steps={KILL_RUN_STEPS}"])
  results = train_and_evaluate(config, workdir)
  return {"config": config, "results": results,
          "losses": {s: v[0] for s, v in losses(workdir).items()},
          "params": jax.device_get(restore(workdir, config).params)}


def _kill_points():
  """Every place a kill can land, in execution order.

  ('step', k): right after step k is dispatched (ARJAX_FAULT_INJECT hook). ('save', k): while
  the asynchronous checkpoint of step k is being written (hook, after a random 0-50 ms).
  ('external', k): a SIGKILL from the test a random 0-100 ms after step k's log line.
  """
  points = []
  for k in range(1, KILL_RUN_STEPS + 1):
    points.append(("step", k))
    if k < KILL_RUN_STEPS:  # the final checkpoint is written synchronously, after the loop.
      points += [("save", k), ("external", k)]
  return points


def test_sigkill_at_random_moments_resumes_bit_identically(long_reference, compile_cache,
                                                             tmp_path):
  rng = random.Random(SEED)
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cmd = train_cmd(workdir, f"--config.train.num_steps={KILL_RUN_STEPS}")
  cmd[cmd.index(RUN_CONFIG)] = KILL_RUN_CONFIG
  points = _kill_points()
  partial_seen, kills = set(), []
  last_complete, next_point = None, 0
  phases = list(KILL_PHASES) * (NUM_KILLS // len(KILL_PHASES))
  rng.shuffle(phases)
  for trial in range(NUM_KILLS):
    # Points the resumed run will reach, drawn at random, leaving room for the kills to come.
    reachable = [i for i in range(next_point, len(points))
                 if last_complete is None or points[i][1] > last_complete]
    assert len(reachable) >= NUM_KILLS - trial, (SEED, kills, last_complete)
    window = reachable[:len(reachable) - (NUM_KILLS - trial) + 1]
    # Of this trial's kind where the window has one (near the end it may not: any point).
    i = rng.choice([j for j in window if points[j][0] == phases[trial]] or window)
    phase, k = points[i]
    next_point = i + 1
    if phase == "external":
      env, kw = subprocess_env(compile_cache), dict(kill_after_step=k, delay=rng.uniform(0, .1))
    else:
      hook = f"step:{k}" if phase == "step" else f"save:{k}:{rng.uniform(0, 0.05):.3f}"
      env, kw = subprocess_env(compile_cache, ARJAX_FAULT_INJECT=hook), {}
    rc, log = _run_until_killed(cmd, env, **kw)
    context = f"seed {SEED}, kills so far {kills}, now {phase} at step {k}:\n{log[-3000:]}"
    assert _resumed_from(log) == last_complete, context  # the last *complete* checkpoint.
    assert rc == -signal.SIGKILL, context
    kills.append((phase, k))
    partial_seen.update(e for e in os.listdir(ckpt_dir) if "tmp" in e)
    steps = complete_steps(ckpt_dir)
    last_complete = steps[-1] if steps else None
    if phase == "step":  # killed before step k's checkpoint was started.
      assert last_complete is None or last_complete < k, context
    elif phase == "save":
      assert last_complete is None or last_complete <= k, context
  rc, log = _run_until_killed(cmd, subprocess_env(compile_cache))
  assert rc == 0, f"seed {SEED}:\n{log[-3000:]}"
  assert _resumed_from(log) == last_complete

  # Every loss any run logged, killed or not, equals the uninterrupted run's, bit for bit.
  got = losses(workdir)
  assert sorted(got) == list(range(1, KILL_RUN_STEPS + 1)), (SEED, got)
  for step, values in got.items():
    assert values == [long_reference["losses"][step]] * len(values), (SEED, step, values)
  assert_trees_equal(jax.device_get(restore(workdir, long_reference["config"]).params),
                     long_reference["params"])
  final = [r for r in read_metrics(workdir) if "test_bits_per_dim" in r][-1]
  assert final["test_bits_per_dim"] == long_reference["results"]["test_bits_per_dim"]
  print(f"seed {SEED}: {len(kills)} kills {kills}; partial checkpoints they left "
        f"(never resumed from): {sorted(partial_seen)}")


def test_restarting_a_finished_run_only_evaluates_again(reference, tmp_path):
  # A kill after the final checkpoint (e.g. during the last evaluation) leaves a finished run:
  # restarting it must not try to write that checkpoint again.
  workdir = str(tmp_path / "done")
  shutil.copytree(reference["workdir"], workdir)
  results = train_and_evaluate(reference["config"], workdir)
  assert results["test_bits_per_dim"] == reference["results"]["test_bits_per_dim"]
  assert complete_steps(os.path.join(workdir, "checkpoints"))[-1] == 6


def test_nonfinite_steps_are_rejected_and_never_checkpointed(compile_cache, tmp_path):
  # lr=1e30: step 1 is finite (params become ~1e30), every later step's loss is NaN.
  workdir = str(tmp_path / "nan")
  config = load_config(RUN_CONFIG, ["train.lr=1e30", "train.warmup_steps=0",
                                    "train.max_nonfinite_steps=3", "train.num_steps=20",
                                    "train.keep_checkpoints=10",
                                    "train.async_checkpointing=False"])
  with pytest.raises(NonFiniteError, match="3 consecutive non-finite steps ending at step 4"):
    train_and_evaluate(config, workdir)
  rows = {r["step"]: r for r in read_metrics(workdir)}
  assert np.isfinite(rows[1]["loss"]) and rows[1]["rejected_steps"] == 0
  assert [rows[s]["rejected_steps"] for s in (2, 3, 4)] == [1, 2, 3]
  assert complete_steps(os.path.join(workdir, "checkpoints")) == [1, 2, 3]
  first = None
  for step in (1, 2, 3):
    state = jax.device_get(restore(workdir, config, step=step))
    for leaf in jax.tree.leaves((state.params, state.opt_state)):
      assert np.isfinite(leaf).all(), f"non-finite value in checkpoint {step}"
    assert int(state.rejected) == step - 1
    if first is None:
      first = state
    else:  # a rejected step leaves parameters and optimizer state exactly as they were.
      assert_trees_equal(state.params, first.params)
      assert_trees_equal(state.opt_state, first.opt_state)


def test_infinite_learning_rate_update_is_rejected(compile_cache):
  # Finite loss and gradients but a NaN update (lr=inf): the step must still be rejected.
  from arjax import data
  from arjax.train.loop import Experiment
  # The config refuses lr=inf at load (arjax.config.validate); the step's guard is the second
  # line of defence, so the field is set after loading, past validation.
  with pytest.raises(ValueError, match=r"config.train.lr=inf; expected a finite number"):
    load_config(RUN_CONFIG, ["train.lr=1e999"])  # 1e999 = inf
  config = load_config(RUN_CONFIG, ["train.warmup_steps=0"])
  with config.unlocked():
    config.train.lr = float("inf")
  exp = Experiment(config)
  _, shardings = exp.abstract_state()
  state = exp.init_state()  # the reference run's program: a compilation cache hit.
  before = jax.device_get(state.params)
  batch = next(data.make_iterator(config.data, global_batch_size=8, seed=0))
  state, _ = exp.jit_train_step(shardings)(state, exp.to_global(batch))
  assert int(state.rejected) == 1 and int(state.step) == 1
  assert_trees_equal(jax.device_get(state.params), before)


@contextlib.contextmanager
def _small_disk(path):
  """A 16 MiB tmpfs at `path` when this process may mount one (root with CAP_SYS_ADMIN).

  ARJAX_TEST_NO_MOUNT=1 forces the fallback (a patched save), to test it where mounting works.
  """
  os.makedirs(path, exist_ok=True)
  if os.environ.get("ARJAX_TEST_NO_MOUNT") or subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", path],
      capture_output=True).returncode != 0:
    yield False
    return
  try:
    yield True
  finally:
    subprocess.run(["umount", "-l", path], capture_output=True)


def _fill(directory):
  fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
  try:
    while True:
      os.write(fd, b"\0" * 65536)
  except OSError as e:
    assert e.errno == errno.ENOSPC
  finally:
    os.close(fd)


def test_full_disk_at_save_time(reference, compile_cache, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cfg = lambda n: load_config(RUN_CONFIG, [f"train.num_steps={n}"])
  with _small_disk(ckpt_dir) as real:
    train_and_evaluate(cfg(2), workdir)
    assert complete_steps(ckpt_dir) == [1, 2]
    if real:  # a real full disk: fill the tmpfs, TensorStore's writes then fail with ENOSPC.
      _fill(ckpt_dir)
    else:  # no mount permission: orbax's save raises what a full disk raises.
      import orbax.checkpoint as ocp
      def full(self, step, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), ckpt_dir)
      monkeypatch.setattr(ocp.CheckpointManager, "save", full)
    with pytest.raises(CheckpointSaveError) as e:
      train_and_evaluate(cfg(6), workdir)
    msg = str(e.value)
    assert "saving checkpoint step 3" in msg and "No space left on device" in msg, msg
    assert "Complete checkpoints, intact and resumable: [1, 2]" in msg, msg
    assert complete_steps(ckpt_dir) == [1, 2]
    # Space again: the run resumes from step 2 and ends exactly where the reference did.
    if real:
      os.remove(os.path.join(ckpt_dir, "filler"))
    monkeypatch.undo()
    train_and_evaluate(cfg(6), workdir)
    assert_trees_equal(jax.device_get(restore(workdir, reference["config"]).params),
                       reference["params"])
  print("full disk simulated with", "a 16 MiB tmpfs" if real else "a patched orbax save")
