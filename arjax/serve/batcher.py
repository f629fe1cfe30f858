"""The batching loop: a bounded queue of requests feeding the engine's slots, in one thread.

A request of K images (`Job`) waits in the queue until a slot frees; its images then take slots
one by one as they free (a slot whose image finishes is refilled before the next step), older
requests first, and it is answered when its last image is done. The queue holds at most
`queue_size` requests that have not started: `submit` raises `QueueFull` beyond that (the server
answers 503), so nothing is ever dropped silently. `close()` stops accepting; the loop finishes
every request already accepted and then ends (`join`).

Only the loop's thread touches the engine. `Job.on_done(job, error)` is called once per job from
that thread (error None on success; after an engine failure every pending job gets it).

Legend: S slots, K images of a request, N tokens per image.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Callable, List, Optional

import numpy as np

from arjax.serve.engine import (ACTIVE, CFG, IMAGE, INDEX, LABEL, PREV, SEED, TEMPERATURE,
                                TOP_K, TOP_P, Engine)
from arjax.serve.protocol import GenerateRequest


class QueueFull(RuntimeError):
  pass


class Closed(RuntimeError):
  pass


class Job:
  """One accepted request: its K images' tokens int32 [K, N], filled in as they are drawn."""

  def __init__(self, request: GenerateRequest, num_tokens: int,
               on_done: Callable[["Job", Optional[BaseException]], None]):
    self.request = request
    self.tokens = np.zeros((len(request.labels), num_tokens), np.int32)
    self.admitted = 0   # images given a slot so far.
    self.finished = 0   # images fully drawn.
    self.on_done = on_done
    self.submitted = time.monotonic()
    self.started: Optional[float] = None   # when its first image took a slot.
    self.done: Optional[float] = None


class Batcher:
  """Runs `engine` over the requests submitted to it (see the module docstring)."""

  def __init__(self, engine: Engine, queue_size: int):
    if queue_size < 1:
      raise ValueError(f"queue_size={queue_size}; expected >= 1")
    self.engine, self.queue_size = engine, int(queue_size)
    self._cv = threading.Condition()
    self._queue: collections.deque = collections.deque()
    self._running: List[Job] = []    # started, not finished (some images may still wait).
    self._slot_job: List[Optional[Job]] = [None] * engine.slots
    self._slot_image = [0] * engine.slots
    self._ints, self._floats = engine.empty_inputs()
    self._closing = False
    self.error: Optional[BaseException] = None
    self.completed = self.rejected = self.images = 0
    self._thread = threading.Thread(target=self._loop, name="arjax-serve-batcher", daemon=True)

  def start(self) -> "Batcher":
    self._thread.start()
    return self

  def submit(self, job: Job) -> None:
    """Queues `job`; QueueFull when queue_size requests are waiting, Closed after close()."""
    with self._cv:
      if self.error is not None:
        raise Closed(f"the engine failed: {type(self.error).__name__}: {self.error}")
      if self._closing:
        raise Closed("the server is shutting down")
      if len(self._queue) >= self.queue_size:
        self.rejected += 1
        raise QueueFull(f"the queue is full ({self.queue_size} requests waiting)")
      self._queue.append(job)
      self._cv.notify()

  def close(self) -> None:
    """Stops accepting; the requests already accepted are still finished."""
    with self._cv:
      self._closing = True
      self._cv.notify()

  def join(self, timeout: Optional[float] = None) -> bool:
    """Waits for the loop to end (after close()); True when it has."""
    self._thread.join(timeout)
    return not self._thread.is_alive()

  def stats(self):
    with self._cv:
      return {"slots": self.engine.slots, "active_slots": int(self._ints[:, ACTIVE].sum()),
              "queued": len(self._queue), "running": len(self._running),
              "queue_size": self.queue_size, "completed": self.completed,
              "rejected": self.rejected, "images": self.images, "steps": self.engine.steps,
              "closing": self._closing,
              "error": None if self.error is None else f"{type(self.error).__name__}: "
                                                       f"{self.error}"}

  # -- the loop's thread ----------------------------------------------------------------------
  def _admit(self) -> None:
    """Fills free slots: the running requests' waiting images first, then the queue's."""
    for s in np.flatnonzero(self._ints[:, ACTIVE] == 0):
      job = next((j for j in self._running if j.admitted < len(j.request.labels)), None)
      if job is None:
        if not self._queue:
          return
        job = self._queue.popleft()
        job.started = time.monotonic()
        self._running.append(job)
      r, j = job.request, job.admitted
      job.admitted += 1
      self._ints[s] = 0
      self._ints[s, [LABEL, SEED, IMAGE, TOP_K, ACTIVE]] = [r.labels[j], r.seed, j, r.top_k, 1]
      self._floats[s, [TEMPERATURE, TOP_P, CFG]] = [r.temperature, r.top_p, r.cfg_scale]
      self._slot_job[s], self._slot_image[s] = job, j

  def _loop(self) -> None:
    n = self.engine.num_tokens
    while True:
      with self._cv:
        self._admit()
        active = np.flatnonzero(self._ints[:, ACTIVE])
        if active.size == 0:
          if self._closing:   # nothing running and (after _admit) nothing queued.
            return
          self._cv.wait()
          continue
        ints, floats = self._ints.copy(), self._floats.copy()
      try:
        tokens = self.engine.step(ints, floats)
      except BaseException as e:  # answer every pending request rather than hang them.
        self._fail_all(e)
        return
      finished = []
      with self._cv:
        for s in active:
          job, j, i = self._slot_job[s], self._slot_image[s], int(self._ints[s, INDEX])
          job.tokens[j, i] = tokens[s]
          self._ints[s, PREV], self._ints[s, INDEX] = tokens[s], i + 1
          if i + 1 == n:  # the slot frees; _admit refills it before the next step.
            self._ints[s, ACTIVE] = 0
            self._slot_job[s] = None
            job.finished += 1
            self.images += 1
            if job.finished == len(job.request.labels):
              job.done = time.monotonic()
              self._running.remove(job)
              self.completed += 1
              finished.append(job)
      for job in finished:
        _notify(job, None)

  def _fail_all(self, error: BaseException) -> None:
    with self._cv:
      self.error = error
      jobs = self._running + list(self._queue)
      self._running, self._queue = [], collections.deque()
      self._ints[:, ACTIVE] = 0
    for job in jobs:
      _notify(job, error)


def _notify(job: Job, error: Optional[BaseException]) -> None:
  # A callback that fails (e.g. its event loop has closed) must not stop the loop serving others.
  try:
    job.on_done(job, error)
  except Exception:  # noqa: BLE001
    logging.getLogger(__name__).exception("a request's completion callback failed")
