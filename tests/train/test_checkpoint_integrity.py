"""Checkpoints you can trust: every step carries digests of its files, a flipped byte, an empty or
a missing file is named and resume falls back to the newest intact step, no intact step refuses
to start, old steps without digests still restore (warned), a failed asynchronous save ends the
run within seconds, keep_checkpoints >= 1. All on real tiny runs with real corrupted files."""
import json
import logging
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from arjax.train.checkpoint import (DIGESTS_FILE, CheckpointCorruptError, CheckpointSaveError,
                                    Checkpointer, verify_step)
from arjax.train.loop import Experiment, train_and_evaluate
from tests.helpers import tiny_config
from tests.scale.conftest import ROOT, RUN_CONFIG, losses

NUM_STEPS = 4  # checkpoints at steps 2 and 4.


def _config(**overrides):
  return tiny_config(**{"model__backbone__num_layers": 1, "train__num_steps": NUM_STEPS,
                        "train__checkpoint_every": 2, "train__async_checkpointing": True,
                        **overrides})


def _target(exp):
  abstract, shardings = exp.abstract_state()
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 4-step run (asynchronous saves at steps 2 and 4) and its restored states."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = _config()
  train_and_evaluate(config, workdir)
  exp = Experiment(config)
  target = _target(exp)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    states = {s: jax.device_get(ckpt.restore(s, target)[0]) for s in (2, 4)}
  finally:
    ckpt.close()
  return {"workdir": workdir, "config": config, "exp": exp, "target": target, "states": states}


def _copy(run, tmp_path):
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  return workdir


def _largest_array_file(step_dir):
  """The biggest OCDBT data file of the train state (where most array bytes live)."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.sep + "d" + os.sep in os.path.join(r, f)]
  return max(files, key=os.path.getsize)


def _flip(path, where=0.5):
  data = bytearray(open(path, "rb").read())
  data[int(len(data) * where)] ^= 0x10
  open(path, "wb").write(bytes(data))


def _equal(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_every_file_of_every_step_is_digested_and_verifies(run):
  ckpt_dir = os.path.join(run["workdir"], "checkpoints")
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]
  for step in (2, 4):
    step_dir = os.path.join(ckpt_dir, str(step))
    on_disk = {os.path.relpath(os.path.join(r, f), step_dir)
               for r, _, fs in os.walk(step_dir) for f in fs}
    with open(os.path.join(step_dir, DIGESTS_FILE)) as f:
      listed = set(json.load(f)["files"])
    # Everything but the digests themselves and the two files Orbax writes after them.
    assert on_disk - listed == {DIGESTS_FILE, "_CHECKPOINT_METADATA", "commit_success.txt"}
    assert listed <= on_disk and any(p.startswith("state" + os.sep) for p in listed)
    assert verify_step(step_dir) == []


@pytest.mark.parametrize("mode", ["flip", "empty", "missing"])
def test_damaged_file_is_named(run, tmp_path, mode):
  workdir = _copy(run, tmp_path)
  step_dir = os.path.join(workdir, "checkpoints", "4")
  victim = _largest_array_file(step_dir)
  rel = os.path.relpath(victim, step_dir)
  expected = {"flip": "content differs from its sha256 digest",
              "empty": f"empty (expected {os.path.getsize(victim)} bytes)",
              "missing": "missing"}[mode]
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    if mode == "flip":  # why the digests are needed: Orbax alone restores wrong values silently.
      # Where a flip lands decides whether Orbax notices (a zstd frame header, an unused
      # byte, array data): use the first of 5 positions that Orbax restores without error but
      # with different values (the files' layout differs from run to run).
      import orbax.checkpoint as ocp
      original, silent = open(victim, "rb").read(), None
      for where in (0.5, 0.1, 0.3, 0.7, 0.9):
        _flip(victim, where)
        try:
          raw = ckpt.manager.restore(4, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(run["target"])))["state"]
          if not _equal(jax.device_get(raw), run["states"][4]):
            silent = where
            break
        except Exception:  # pylint: disable=broad-except  # noticed by Orbax: try another.
          pass
        open(victim, "wb").write(original)
      assert silent is not None, "no flip went unnoticed by Orbax alone"
    else:
      {"empty": lambda p: open(p, "wb").close(), "missing": os.remove}[mode](victim)
    with pytest.raises(CheckpointCorruptError) as e:
      ckpt.restore(4, run["target"])
  finally:
    ckpt.close()
  msg = str(e.value)
  assert "\n" not in msg, msg
  assert f"checkpoint step 4 in {os.path.join(workdir, 'checkpoints')} is corrupt" in msg, msg
  assert f"{rel}: {expected}" in msg, msg


def test_resume_falls_back_to_the_newest_intact_step(run, tmp_path, caplog):
  # Step 4's array data has a flipped byte: the trainer names it, moves step 4 aside, resumes
  # from step 2 and trains steps 3 and 4 again, exactly as the uninterrupted run did.
  workdir = _copy(run, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  victim = _largest_array_file(os.path.join(ckpt_dir, "4"))
  _flip(victim)
  caplog.set_level(logging.INFO)
  train_and_evaluate(run["config"], workdir)
  log = [r.getMessage() for r in caplog.records]
  named = [m for m in log if m.startswith("checkpoint step 4 in") and "is corrupt" in m]
  assert len(named) == 1 and os.path.relpath(victim, os.path.join(ckpt_dir, "4")) in named[0]
  fallback = [m for m in log if m.startswith("resuming from step 2, the newest intact")]
  assert len(fallback) == 1 and "4.corrupt" in fallback[0], log
  assert f"resumed from {ckpt_dir}/2" in log
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "4.corrupt"]
  got = losses(workdir)
  for step in (3, 4):  # logged by the original run and by the resumed one: bit-identical.
    assert len(got[step]) == 2 and got[step][0] == got[step][1], got
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    assert _equal(jax.device_get(ckpt.restore(4, run["target"])[0]), run["states"][4])
  finally:
    ckpt.close()


def test_no_intact_step_refuses_to_start(run, tmp_path):
  workdir = _copy(run, tmp_path)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  _flip(_largest_array_file(os.path.join(ckpt_dir, "4")))
  open(os.path.join(ckpt_dir, "2", "data", "metadata"), "wb").close()  # the iterator state
  with pytest.raises(CheckpointCorruptError) as e:
    train_and_evaluate(run["config"], workdir)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"no intact checkpoint in {ckpt_dir}: steps [2, 4]")
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4"]  # nothing moved, nothing trained.


def test_checkpoint_without_digests_restores_with_a_warning(run, tmp_path, caplog):
  workdir = _copy(run, tmp_path)
  for step in (2, 4):  # what a checkpoint written before digests looks like.
    os.remove(os.path.join(workdir, "checkpoints", str(step), DIGESTS_FILE))
  caplog.set_level(logging.INFO)
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    step, state, data = ckpt.restore_latest(run["target"])
  finally:
    ckpt.close()
  assert step == 4 and data and _equal(jax.device_get(state), run["states"][4])
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warned == [f"checkpoint step 4 in {os.path.join(workdir, 'checkpoints')} has no "
                    f"{DIGESTS_FILE} (written before checkpoints carried digests): restoring it "
                    "unverified"], warned


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_checkpoints_below_one_is_refused(tmp_path, keep):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError) as e:
    train_and_evaluate(_config(train__keep_checkpoints=keep), workdir)
  assert str(e.value).startswith(f"train.keep_checkpoints={keep!r}; expected an integer >= 1")
  assert not os.path.exists(workdir)  # refused before anything was created.


def _trainer(workdir, *overrides):
  return subprocess.Popen(
      [sys.executable, "-m", "arjax.train", "--config", RUN_CONFIG, "--workdir", workdir,
       *overrides], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout):
  """(return code, output); fails the test if the trainer is still running after `timeout` s."""
  try:
    out, _ = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, _ = proc.communicate()
    pytest.fail(f"the trainer did not exit within {timeout} s:\n{out[-3000:]}")
  return proc.returncode, out


def test_checkpoint_directory_that_is_a_file_fails_at_start(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a directory")
  rc, out = _finish(_trainer(str(workdir)), timeout=120)
  last = out.strip().splitlines()[-1]
  assert rc == 1 and last == (f"error: checkpoint directory {workdir / 'checkpoints'} exists and "
                              "is not a directory: move it away or choose another workdir"), out


def test_failed_asynchronous_save_ends_the_run(tmp_path):
  # Mid-run, the checkpoint directory is replaced by a file: the next asynchronous save cannot
  # create its temporary directory. Orbax's default (directories created by background threads)
  # left non-daemon threads waiting forever; the run must end, non-zero, naming the directory.
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # The first save is at step 25: the directory goes (after step 2) while no save is in flight.
  proc = _trainer(workdir, "--config.train.num_steps=100000",
                  "--config.train.checkpoint_every=25")
  seen = []
  for line in proc.stdout:
    seen.append(line)
    if "step 2/100000" in line:
      break
  else:
    pytest.fail("".join(seen)[-3000:])
  os.rename(ckpt_dir, ckpt_dir + ".moved")
  with open(ckpt_dir, "w") as f:
    f.write("not a directory")
  start = time.time()
  rc, out = _finish(proc, timeout=60)
  print(f"the trainer exited {time.time() - start:.1f} s after its checkpoint directory went")
  last = out.strip().splitlines()[-1]
  assert rc == 1 and last == (f"error: saving checkpoint step 25 in {ckpt_dir} failed: [Errno 20] "
                              "Not a directory. Complete checkpoints, intact and resumable: none"
                              ), "".join(seen) + out
