"""SIGTERM to the processes of a two-process launch at different moments: every process stops at
the same step, one checkpoint is written together, and all exit 0 (before, the process signalled
first stopped to save while the other went on into the next step's collectives: a deadlock).

The two processes are started here, not through `arjax.launch` (which forwards one signal to all
at once), so each can be signalled on its own. Time limits are inside the test (`wait(timeout)`),
and a hung process is killed, so a regression fails instead of hanging the suite.
"""
import os
import subprocess
import threading
import time

import portpicker
import pytest

from arjax.launch import process_env
from tests.scale.conftest import ROOT, subprocess_env, train_cmd

STARTED = "step 3/"  # a progress line: compiled, in the loop (log_every=1).


def _reader(proc, lines):
  for raw in iter(proc.stdout.readline, b""):
    lines.append(raw.decode(errors="replace"))


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["first-0", "first-1"])
def test_staggered_sigterm_stops_every_process_together(order, compile_cache, tmp_path):
  workdir = str(tmp_path / "w")
  port = portpicker.pick_unused_port()
  # Many steps, no periodic checkpoint: the only checkpoint is the one the signals cause.
  cmd = train_cmd(workdir, "--config.train.num_steps=100000", "--config.train.log_every=1",
                  "--config.train.checkpoint_every=100000")
  base = subprocess_env(compile_cache)
  procs, outputs = [], []
  for i in range(2):
    env = process_env(base, process_id=i, num_processes=2, port=port, devices_per_process=4,
                      platform="cpu")
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    lines = []
    threading.Thread(target=_reader, args=(p, lines), daemon=True).start()
    procs.append(p)
    outputs.append(lines)
  try:
    deadline = time.time() + 300
    while not all(any(STARTED in l for l in lines) for lines in outputs):
      assert time.time() < deadline, "".join(outputs[0][-50:] + outputs[1][-50:])
      assert all(p.poll() is None for p in procs), "".join(outputs[0] + outputs[1])
      time.sleep(0.2)
    first, second = order
    procs[first].terminate()
    time.sleep(0.5)
    procs[second].terminate()
    codes = []
    for p in procs:
      try:
        codes.append(p.wait(timeout=120))
      except subprocess.TimeoutExpired:
        codes.append("hung")
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  time.sleep(0.5)  # the reader threads drain what the processes wrote last.
  log = "".join(outputs[0][-40:]) + "\n----\n" + "".join(outputs[1][-40:])
  assert codes == [0, 0], log
  # One coordinated checkpoint, at the step both processes stopped at.
  stopped = [[l for l in lines if "preempted at step" in l] for lines in outputs]
  assert all(len(s) == 1 for s in stopped), log
  steps = {s[0].split("preempted at step ")[1].split(":")[0] for s in stopped}
  assert len(steps) == 1, stopped
  entries = os.listdir(os.path.join(workdir, "checkpoints"))
  assert entries == [steps.pop()], entries
