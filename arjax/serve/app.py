"""The HTTP side (aiohttp): POST /generate, GET /health, and the drain on SIGTERM.

  POST /generate   a JSON body (arjax.serve.protocol) ->
                   200 {"format": "png", "png": base64 PNG grid (one row, one image per label),
                        "width", "height", "labels", "seed", "timing": {"queued_s", "total_s"}}
                   or, with "format": "tokens", {"tokens": [[N ints] per image], "token_grid":
                        [h, w], ...}; with `Accept: image/png` and format 'png', the PNG bytes.
                   400 {"error": one line, "field": the offending field} for a bad request
                   (malformed JSON: field 'body'); 503 {"error", "field": null} when the queue
                   is full or the server is shutting down (with Retry-After); 500 when the
                   engine failed.
  GET /health      200 {"status": "ok", slots, active_slots, queued, running, queue_size,
                        completed, rejected, images, steps, model facts}; 503 when draining or
                        after an engine failure.

Shutdown (SIGTERM or SIGINT): the listening socket closes and new requests on open connections
get 503; every accepted request (running or queued) is finished and answered; then the server
closes its connections and `serve` returns 0.

Legend: K images of a request, N tokens per image.
"""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import signal
import socket
import time
from typing import Callable, Dict, Optional

import numpy as np
from aiohttp import web

from arjax.serve.batcher import Batcher, Closed, Job, QueueFull
from arjax.serve.engine import Engine
from arjax.serve.protocol import Limits, RequestError, parse_generate

_STATE = web.AppKey("arjax_serve", object)


def _error(status: int, message: str, field: Optional[str], headers=None) -> web.Response:
  return web.json_response({"error": message, "field": field}, status=status, headers=headers)


def png_grid(images: np.ndarray) -> bytes:
  """uint8 [K, H, W, C] -> PNG bytes of one row of K images (arjax.evaluate.images.make_grid)."""
  from PIL import Image
  from arjax.evaluate.images import make_grid
  grid = make_grid(images, ncol=images.shape[0])
  mode = "L" if grid.shape[-1] == 1 else "RGB"
  buf = io.BytesIO()
  Image.fromarray(grid[..., 0] if mode == "L" else grid, mode=mode).save(buf, format="PNG")
  return buf.getvalue()


class _State:
  def __init__(self, engine: Engine, batcher: Batcher, limits: Limits, info: Dict):
    self.engine, self.batcher, self.limits, self.info = engine, batcher, limits, info
    self.draining = False
    self.handlers = 0   # /generate handlers that have accepted a request and not yet answered.
    # Decoding tokens to images and PNG encoding run here, off the event loop and off the
    # batching thread.
    self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="arjax-serve-png")


async def _generate(request: web.Request) -> web.Response:
  st: _State = request.app[_STATE]
  if st.draining:
    return _error(503, "the server is shutting down", None, {"Retry-After": "1"})
  raw = await request.read()
  try:
    body = json.loads(raw)
  except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError.
    return _error(400, f"malformed JSON body: {e}", "body")
  try:
    req = parse_generate(body, st.limits)
  except RequestError as e:
    return _error(400, str(e), e.field)
  loop = asyncio.get_running_loop()
  fut = loop.create_future()

  def resolve(error):
    if not fut.done():
      fut.set_result(error)

  job = Job(req, st.engine.num_tokens, lambda job, error: loop.call_soon_threadsafe(resolve,
                                                                                     error))
  try:
    st.batcher.submit(job)
  except QueueFull as e:
    return _error(503, f"{e}; retry later", None, {"Retry-After": "1"})
  except Closed as e:
    return _error(503, str(e), None, {"Retry-After": "1"})
  st.handlers += 1
  try:
    error = await fut
    if error is not None:
      return _error(500, f"generation failed: {type(error).__name__}: {error}", None)
    out = {"format": req.format, "labels": req.labels, "seed": req.seed,
           "timing": {"queued_s": round(job.started - job.submitted, 4),
                      "total_s": round(job.done - job.submitted, 4)}}
    if req.format == "tokens":
      out.update(tokens=job.tokens.tolist(), token_grid=st.info["token_grid"])
      return web.json_response(out)
    images = await loop.run_in_executor(st.pool, st.engine.decode_images, job.tokens)
    png = await loop.run_in_executor(st.pool, png_grid, images)
    if request.headers.get("Accept", "").split(";")[0].strip() == "image/png":
      return web.Response(body=png, content_type="image/png")
    out.update(png=base64.b64encode(png).decode("ascii"), height=int(images.shape[1]),
               width=int(images.shape[2]))
    return web.json_response(out)
  finally:
    st.handlers -= 1


async def _health(request: web.Request) -> web.Response:
  st: _State = request.app[_STATE]
  stats = st.batcher.stats()
  status = "error" if stats["error"] else ("draining" if st.draining else "ok")
  return web.json_response({"status": status, **stats, **st.info},
                           status=200 if status == "ok" else 503)


def make_app(engine: Engine, batcher: Batcher, limits: Limits, info: Dict) -> web.Application:
  app = web.Application(client_max_size=1 << 20)
  app[_STATE] = _State(engine, batcher, limits, info)
  app.router.add_post("/generate", _generate)
  app.router.add_get("/health", _health)
  return app


async def serve_async(app: web.Application, sock: socket.socket,
                      on_ready: Optional[Callable[[], None]] = None,
                      stop: Optional[asyncio.Event] = None) -> int:
  """Serves `app` on the bound, listening `sock` until SIGTERM / SIGINT (or `stop` is set),
  then drains (see the module docstring). Returns 0."""
  st: _State = app[_STATE]
  loop = asyncio.get_running_loop()
  stop = stop or asyncio.Event()
  signals = []
  try:
    for sig in (signal.SIGTERM, signal.SIGINT):
      loop.add_signal_handler(sig, stop.set)
      signals.append(sig)
  except (RuntimeError, ValueError):  # not the main thread (in-process tests): `stop` only.
    pass
  runner = web.AppRunner(app, handle_signals=False, access_log=None)
  await runner.setup()
  site = web.SockSite(runner, sock)
  await site.start()
  if on_ready is not None:
    on_ready()
  try:
    await stop.wait()
  finally:
    st.draining = True
    await site.stop()          # closes the listener: no new connections.
    st.batcher.close()         # no new requests; the accepted ones finish.
    await loop.run_in_executor(None, st.batcher.join)
    while st.handlers:         # their answers are being rendered and written.
      await asyncio.sleep(0.01)
    await runner.cleanup()
    st.pool.shutdown(wait=True)
    for sig in signals:
      loop.remove_signal_handler(sig)
  return 0


def limits_of(engine: Engine, config, max_images: int) -> Limits:
  e = config.eval
  return Limits(num_classes=engine.num_classes, max_images=int(max_images),
                guidance=engine.guidance,
                defaults={"temperature": float(e.get("temperature", 1.0)),
                          "top_k": int(e.get("top_k", 0)), "top_p": float(e.get("top_p", 1.0)),
                          "cfg_scale": float(e.get("cfg_scale", 1.0)) if engine.guidance
                          else 1.0})


def server_info(engine: Engine, config, workdir: str, step: int) -> Dict:
  model = engine.fm.bind(engine.fm.abstract_params)
  grid = getattr(model.order, "grid", None)
  return {"workdir": workdir, "checkpoint_step": int(step), "model": config.model.name,
          "num_classes": engine.num_classes, "tokens_per_image": engine.num_tokens,
          "token_grid": list(grid) if grid is not None else None,
          "vocab_size": engine.vocab_size, "guidance": engine.guidance,
          "started": time.time()}
