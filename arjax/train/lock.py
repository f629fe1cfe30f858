"""The workdir lock: one trainer per workdir.

A second trainer started on a workdir that a running trainer holds stops at once with
WorkdirLockedError naming the holder (host, pid, start time); `python -m arjax.train` prints it
as one line and exits 2.

Mechanism: `fcntl.flock(LOCK_EX | LOCK_NB)` on WORKDIR/trainer.lock. The kernel releases a flock
when the process holding it dies, however it dies (SIGKILL, OOM, power loss of a host whose
locks a network filesystem then drops), so a lock left by a killed run is stale by construction:
the next trainer simply acquires it. No pid-liveness check is needed, which would be wrong
across hosts and racy under pid reuse. The file's content is only a record of the holder
(JSON: host, pid, start time, and `released` once the holder finished), read to name the holder
in the error and to say when a stale lock from a killed run is taken over. The file is never
deleted (deleting a lock file races with a process that has opened it and is about to lock it).

With several processes (jax.distributed), only process 0 takes the lock; its verdict is
broadcast so that every process of a refused launch stops with the same error.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Any, Dict, Optional

_log = logging.getLogger("arjax.train")

LOCK_FILE = "trainer.lock"


class WorkdirLockedError(RuntimeError):
  """Another trainer holds the workdir; the message names it (host, pid, start time)."""


def _alive_here(record: Dict[str, Any]) -> Optional[bool]:
  """Whether the recorded pid is alive, when it ran on this host (None: another host)."""
  if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
    return None
  try:
    os.kill(record["pid"], 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def describe(record: Optional[Dict[str, Any]]) -> str:
  if not record:
    return "holder unknown (its record is not written yet or unreadable)"
  return (f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, "
          f"started {record.get('started', '?')}")


def read_record(path: str) -> Optional[Dict[str, Any]]:
  try:
    with open(path) as f:
      record = json.load(f)
    return record if isinstance(record, dict) else None
  except (OSError, ValueError):
    return None


class WorkdirLock:
  """Context manager holding WORKDIR/trainer.lock for the life of a training run."""

  def __init__(self, workdir: str, *, process_index: int = 0, process_count: int = 1):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self.process_index, self.process_count = process_index, process_count
    self._fd: Optional[int] = None
    self._record: Dict[str, Any] = {}

  def acquire(self) -> None:
    error = None
    if self.process_index == 0:
      try:
        self._acquire()
      except WorkdirLockedError as e:
        error = e
    if self.process_count > 1:  # every process of a refused launch stops, not only process 0.
      import numpy as np
      from jax.experimental import multihost_utils
      refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if refused and error is None:
        error = WorkdirLockedError(
            f"workdir {os.path.dirname(self.path)} is in use by another trainer "
            f"({describe(read_record(self.path))}; lock file {self.path})")
    if error is not None:
      raise error

  def _acquire(self) -> None:
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        # ENOLCK/EOPNOTSUPP: a filesystem without flock. Say so; do not refuse to train.
        _log.warning("workdir lock %s unavailable on this filesystem (%s): running without a "
                     "lock, so make sure no other trainer uses this workdir", self.path,
                     os.strerror(e.errno))
        return
      # The holder writes its record right after locking: give it a moment to appear.
      record = read_record(self.path)
      for _ in range(20):
        if record:
          break
        time.sleep(0.05)
        record = read_record(self.path)
      raise WorkdirLockedError(
          f"workdir {os.path.dirname(self.path)} is in use by another trainer "
          f"({describe(record)}; lock file {self.path})") from None
    previous = read_record(self.path)
    if previous and not previous.get("released"):
      alive = _alive_here(previous)
      _log.warning("taking over the stale lock %s of a run that ended without releasing it "
                   "(%s%s)", self.path, describe(previous),
                   "; that pid is not running" if alive is False else "")
    self._fd = fd
    self._record = {"host": socket.gethostname(), "pid": os.getpid(),
                    "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    self._write(self._record)

  def _write(self, record: Dict[str, Any]) -> None:
    data = json.dumps(record).encode()
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, data, 0)
    os.fsync(self._fd)

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      self._write(dict(self._record, released=datetime.datetime.now().astimezone().isoformat(
          timespec="seconds")))
    except OSError as e:  # the lock is released below all the same.
      _log.warning("could not mark %s released: %s", self.path, e)
    finally:
      fd, self._fd = self._fd, None
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()
