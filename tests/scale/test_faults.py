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


def _run_until_killed(cmd, env, *, external_delay=None, timeout=300):
  """Runs the trainer; with external_delay, SIGKILLs it that long after its first step line."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  out = []
  deadline = time.time() + timeout
  for line in proc.stdout:
    out.append(line)
    if external_delay is not None and re.search(r"step \d+/6", line):
      time.sleep(external_delay)
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


def test_sigkill_at_random_moments_resumes_bit_identically(reference, compile_cache, tmp_path):
  rng = random.Random(SEED)
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  k1 = rng.randint(1, 2)
  k2 = rng.randint(k1 + 1, 4)
  trials = [  # (what, env hook, external delay)
      (f"during the async save of step {k1}", f"save:{k1}:{rng.uniform(0, 0.05):.3f}", None),
      (f"after dispatching step {k2}", f"step:{k2}", None),
      ("at a random time", None, rng.uniform(0.0, 1.0)),
  ]
  partial_seen = set()
  last_complete = None
  for what, hook, delay in trials:
    env = subprocess_env(compile_cache, **({"ARJAX_FAULT_INJECT": hook} if hook else {}))
    rc, log = _run_until_killed(train_cmd(workdir), env, external_delay=delay)
    context = f"seed {SEED}, kill {what}:\n{log[-3000:]}"
    assert _resumed_from(log) == last_complete, context  # resumed from the last complete one.
    if rc == 0:  # the random-time kill came after the run had finished: nothing to check.
      assert delay is not None, context
      continue
    assert rc == -signal.SIGKILL, context
    entries = os.listdir(ckpt_dir)
    partial_seen.update(e for e in entries if "tmp" in e)
    last_complete = complete_steps(ckpt_dir)[-1] if complete_steps(ckpt_dir) else None
    if hook and hook.startswith("save"):
      assert last_complete is None or last_complete <= k1, context
  rc, log = _run_until_killed(train_cmd(workdir), subprocess_env(compile_cache))
  assert rc == 0, f"seed {SEED}:\n{log[-3000:]}"
  assert _resumed_from(log) == last_complete

  # Every loss any run logged, killed or not, equals the uninterrupted run's, bit for bit.
  got = losses(workdir)
  assert sorted(got) == list(range(1, 7)), (SEED, got)
  for step, values in got.items():
    assert values == [reference["losses"][step]] * len(values), (SEED, step, values)
  assert_trees_equal(jax.device_get(restore(workdir, reference["config"]).params),
                     reference["params"])
  final = [r for r in read_metrics(workdir) if "test_bits_per_dim" in r][-1]
  assert final["test_bits_per_dim"] == reference["results"]["test_bits_per_dim"]
  print(f"seed {SEED}: kills at {[t[:2] for t in trials]}; partial checkpoints the kills left "
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
  config = load_config(RUN_CONFIG, ["train.lr=1e999", "train.warmup_steps=0"])  # 1e999 = inf
  assert config.train.lr == float("inf")
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
