"""`python -m arjax.serve` as a process: startup refusals, a full queue, and the SIGTERM drain.

Every subprocess has a time limit inside the test; a server is always killed at the end.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.serve.conftest import ROOT, get, post

LIMIT = 240  # seconds any one subprocess may take (loading and compiling included).


def _env():
  return dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")


def _run(*args):
  return subprocess.run([sys.executable, "-m", "arjax.serve", *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=LIMIT)


def _refusal(proc):
  """The one `error: ...` line of a refused start (exit status 2)."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def test_refuses_a_workdir_without_a_complete_checkpoint(serve_run, tmp_path):
  # The run's config, and a step Orbax never finished (its tmp directory was left behind).
  workdir = tmp_path / "interrupted"
  os.makedirs(workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1700000000")
  shutil.copy(os.path.join(serve_run, "config.json"), workdir / "config.json")
  line = _refusal(_run("--workdir", str(workdir), "--port", "0"))
  assert "no complete checkpoint" in line and str(workdir) in line
  line = _refusal(_run("--workdir", str(tmp_path / "missing"), "--port", "0"))
  assert "config.json not found" in line


def test_refuses_a_port_in_use(serve_run):
  with socket.socket() as taken:
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    line = _refusal(_run("--workdir", serve_run, "--port", str(port)))
  assert f"port {port} on 127.0.0.1 is in use" in line


def _start(workdir, *args):
  proc = subprocess.Popen([sys.executable, "-m", "arjax.serve", "--workdir", workdir,
                           "--port", "0", *args], cwd=ROOT, env=_env(), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + LIMIT
  line = proc.stdout.readline()  # the server prints one line once it serves.
  if not line.startswith("serving http://") or time.monotonic() > deadline:
    proc.kill()
    raise AssertionError(f"no 'serving' line: {line!r} {proc.stderr.read()[-2000:]}")
  return proc, line.split()[1]


def _wait_for(url, what, timeout=60):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    health = get(url + "/health")[1]
    if what(health):
      return health
    time.sleep(0.01)
  raise AssertionError(f"health never reached the expected state: {health}")


def test_full_queue_is_503_and_sigterm_drains(serve_run):
  """slots 1, queue 1: A runs (64 images, one at a time), B waits, C finds the queue full
  (503, nothing dropped). SIGTERM then closes the port, and A and B still finish, complete,
  before the process exits 0."""
  proc, url = _start(serve_run, "--slots", "1", "--queue", "1", "--max_images", "64")
  pool = concurrent.futures.ThreadPoolExecutor(2)
  try:
    a = pool.submit(post, url + "/generate", {"labels": [1] * 64, "seed": 1, "format": "tokens"})
    _wait_for(url, lambda h: h["running"] == 1 and h["queued"] == 0)
    b = pool.submit(post, url + "/generate", {"labels": [2, 3], "seed": 2, "format": "tokens"})
    _wait_for(url, lambda h: h["queued"] == 1)
    status, out, headers = post(url + "/generate", {"labels": [4], "format": "tokens"})
    assert status == 503 and "queue is full" in out["error"] and headers["Retry-After"] == "1"
    assert not a.done() and not b.done()

    proc.send_signal(signal.SIGTERM)
    port = int(url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 30
    while True:  # the listener closes promptly, while A is still running.
      try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
      except ConnectionRefusedError:
        break
      assert time.monotonic() < deadline, "the port still accepts connections after SIGTERM"
      time.sleep(0.01)
    refused_while_running = not a.done()
    (sa, ra, _), (sb, rb, _) = a.result(timeout=LIMIT), b.result(timeout=LIMIT)
    assert sa == 200 and np.asarray(ra["tokens"]).shape == (64, 49)
    assert sb == 200 and np.asarray(rb["tokens"]).shape == (2, 49)
    assert refused_while_running
    assert proc.wait(timeout=LIMIT) == 0
    assert "stopped: 2 requests answered, 1 refused" in proc.stdout.read()
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
    if proc.poll() is None:
      proc.kill()
      proc.wait()
