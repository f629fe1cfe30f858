"""The workdir lock: a second trainer on a workdir in use is refused at once (exit 2, one line
naming the holder), a lock left by a SIGKILLed process is taken over, only process 0 locks."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from arjax.train.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError
from tests.scale.conftest import ROOT, RUN_CONFIG

HOLD = """
import sys, time
from arjax.train.lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _env():
  return dict(os.environ, PYTHONPATH=ROOT)


def _record(workdir):
  with open(os.path.join(workdir, LOCK_FILE)) as f:
    return json.load(f)


def test_second_lock_is_refused_naming_the_holder_and_released_lock_is_free(tmp_path):
  workdir = str(tmp_path)
  first = WorkdirLock(workdir)
  first.acquire()
  held = _record(workdir)
  assert held["host"] == socket.gethostname() and held["pid"] == os.getpid()
  with pytest.raises(WorkdirLockedError) as e:  # flock: a second open file conflicts in-process too
    WorkdirLock(workdir).acquire()
  assert str(e.value) == (f"workdir {workdir} is in use by another trainer (host "
                          f"{held['host']}, pid {held['pid']}, started {held['started']}; lock "
                          f"file {os.path.join(workdir, LOCK_FILE)})")
  # Processes other than 0 of a launch never take the lock (process 0 holds it for them).
  WorkdirLock(workdir, process_index=1).acquire()
  first.release()
  assert _record(workdir)["released"]
  with WorkdirLock(workdir):  # a released lock is taken without a stale-lock warning.
    assert "released" not in _record(workdir)


def test_lock_of_a_sigkilled_process_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path)
  holder = subprocess.Popen([sys.executable, "-c", HOLD, workdir], env=_env(),
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid}, started"):
      WorkdirLock(workdir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
  stale = _record(workdir)
  assert stale["pid"] == holder.pid and "released" not in stale  # killed: never released.
  caplog.set_level(logging.INFO)
  with WorkdirLock(workdir):
    assert _record(workdir)["pid"] == os.getpid()
  warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert warned == [f"taking over the stale lock {os.path.join(workdir, LOCK_FILE)} of a run that "
                    f"ended without releasing it (host {stale['host']}, pid {holder.pid}, started "
                    f"{stale['started']}; that pid is not running)"], warned


def test_second_trainer_on_a_workdir_in_use_exits_2_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "arjax.train", "--config", RUN_CONFIG, "--workdir", workdir,
         "--config.train.num_steps=100000"]
  first = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
  try:
    for line in first.stdout:  # the first trainer is training (and holds the lock).
      if "step 1/100000" in line:
        break
    assert first.poll() is None
    held = _record(workdir)
    assert held["pid"] == first.pid
    start = time.time()
    second = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=120)
    print(f"the second trainer exited {time.time() - start:.1f} s after it started")
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
  assert second.returncode == 2, second.stdout + second.stderr
  lines = second.stderr.strip().splitlines()
  assert lines == [f"error: workdir {workdir} is in use by another trainer (host {held['host']}, "
                   f"pid {first.pid}, started {held['started']}; lock file "
                   f"{os.path.join(workdir, LOCK_FILE)})"], second.stderr
  assert "step 1/" not in second.stdout + second.stderr  # it never trained.


def test_every_process_of_a_launch_on_a_locked_workdir_exits_2(tmp_path):
  # Only process 0 takes the lock; its verdict is broadcast, so process 1 stops too instead of
  # waiting at the next collective for a process 0 that has gone.
  import portpicker
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with WorkdirLock(workdir):
    held = _record(workdir)
    proc = subprocess.run(
        [sys.executable, "-m", "arjax.launch", "--num_processes", "2", "--devices_per_process",
         "4", "--port", str(portpicker.pick_unused_port()), "--timeout", "200", "--",
         sys.executable, "-m", "arjax.train", "--config", RUN_CONFIG, "--workdir", workdir],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  expected = (f"error: workdir {workdir} is in use by another trainer (host {held['host']}, pid "
              f"{os.getpid()}, started {held['started']}; lock file "
              f"{os.path.join(workdir, LOCK_FILE)})")
  lines = proc.stdout.splitlines()
  # Process 0 prints straight to the launcher's stdout, where a native library's log line
  # (gloo) written at the same moment may be glued to it: look for the text, not a whole line.
  assert expected in proc.stdout and f"[1] {expected}" in lines, proc.stdout + proc.stderr
  assert "step 1/" not in proc.stdout
