"""Shared fixtures of the serving tests: one tiny trained run and one in-process server on it.

The run is tests.helpers.tiny_config (raster AR, 7x7 pixels x 4 levels, width 32, 2 layers;
class dropout 0.1, so guidance is served) trained 2 steps. The server (slots 4, queue 16,
at most 8 images a request) runs its asyncio loop in a thread on a free port; the fixture's
teardown stops it the way SIGTERM does (the same drain).
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.error
import urllib.request

import pytest

from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLOTS, QUEUE, MAX_IMAGES = 4, 16, 8


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory):
  from arjax.train.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("serve") / "run")
  train_and_evaluate(tiny_config(train__num_steps=2), workdir)
  return workdir


def post(url, body, *, raw=None, accept=None, timeout=120):
  """(status, decoded JSON or bytes, headers) of POST url with a JSON body (or raw bytes)."""
  data = raw if raw is not None else json.dumps(body).encode()
  req = urllib.request.Request(url, data=data, method="POST",
                               headers={"Content-Type": "application/json",
                                        **({"Accept": accept} if accept else {})})
  try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
      status, payload, headers = r.status, r.read(), r.headers
  except urllib.error.HTTPError as e:
    status, payload, headers = e.code, e.read(), e.headers
  if headers.get("Content-Type", "").startswith("application/json"):
    payload = json.loads(payload)
  return status, payload, headers


def get(url, timeout=30):
  try:
    with urllib.request.urlopen(url, timeout=timeout) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


class InProcessServer:
  def __init__(self, workdir):
    import jax
    from arjax import loading, parallel
    from arjax.serve.__main__ import bind
    from arjax.serve.app import limits_of, make_app, server_info
    from arjax.serve.batcher import Batcher
    from arjax.serve.engine import Engine
    mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    self.fm, self.variables, self.config = loading.load(workdir, mesh=mesh)
    self.engine = Engine(self.fm, self.variables, self.config, slots=SLOTS)
    self.engine.warmup()
    self.batcher = Batcher(self.engine, QUEUE).start()
    self.app = make_app(self.engine, self.batcher, limits_of(self.engine, self.config,
                                                             MAX_IMAGES),
                        server_info(self.engine, self.config, workdir, 2))
    self.sock = bind(0)
    self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
    self.loop = asyncio.new_event_loop()
    self.ready = threading.Event()
    self.code = None
    self.thread = threading.Thread(target=self._run, daemon=True)
    self.thread.start()
    assert self.ready.wait(60), "the in-process server did not start"

  def _run(self):
    from arjax.serve.app import serve_async
    asyncio.set_event_loop(self.loop)
    self.stop = asyncio.Event()
    self.code = self.loop.run_until_complete(
        serve_async(self.app, self.sock, on_ready=self.ready.set, stop=self.stop))

  def close(self):
    self.loop.call_soon_threadsafe(self.stop.set)
    self.thread.join(60)


@pytest.fixture(scope="session")
def server(serve_run):
  s = InProcessServer(serve_run)
  yield s
  s.close()
  assert s.code == 0
