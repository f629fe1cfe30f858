"""python -m arjax.serve --workdir W [--port P] [--slots S] [--queue Q] [--max_images K]
                        [--step STEP]

Serves the latest (or STEP) checkpoint of run W over HTTP on 127.0.0.1:P (P=0: a free port):
POST /generate and GET /health (arjax.serve.app), with continuous batching over S slots and
at most Q requests waiting (more are answered 503). Prints one line
`serving http://127.0.0.1:PORT ...` once the model is loaded and compiled; SIGTERM drains
(accepted requests finish) and exits 0.

Refuses to start, with one line `error: ...` on stderr and exit status 2, on a workdir without
a complete (or with a corrupt) checkpoint, on a model it cannot serve, and on a port in use.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from arjax import cli

HOST = "127.0.0.1"


def _fail(message: str) -> int:
  print("error: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
  return 2


def bind(port: int) -> socket.socket:
  """A listening TCP socket on 127.0.0.1:port; OSError (EADDRINUSE) when the port is taken."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  # Lets a restarted server take a port whose old connections linger in TIME_WAIT; a port with
  # a live listener still fails with EADDRINUSE on Linux.
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((HOST, port))
    sock.listen(128)
  except OSError:
    sock.close()
    raise
  sock.setblocking(False)
  return sock


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m arjax.serve", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="an arjax.train run")
  p.add_argument("--port", type=int, default=8000, help="TCP port on 127.0.0.1 (0: any free)")
  p.add_argument("--slots", type=int, default=8, help="images generated at once (batch rows)")
  p.add_argument("--queue", type=int, default=64, help="requests that may wait for a slot")
  p.add_argument("--max_images", type=int, default=64, help="images (labels) per request")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  args = p.parse_args(argv)
  for name in ("slots", "queue", "max_images"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
  if not 0 <= args.port <= 65535:
    p.error(f"--port must be in [0, 65535], got {args.port}")

  from arjax import loading
  workdir = os.path.abspath(args.workdir)
  # The cheap checks first, so a bad workdir or a taken port is refused in seconds.
  try:
    loading.load_workdir_config(workdir)
    step = loading.resolve_step(workdir, args.step)
  except (OSError, ValueError) as e:
    return _fail(f"workdir {args.workdir!r} has no complete checkpoint: {e}")
  try:
    sock = bind(args.port)
  except OSError as e:
    what = "is in use" if e.errno == errno.EADDRINUSE else "cannot be bound"
    return _fail(f"port {args.port} on {HOST} {what} ({e.strerror})")

  import asyncio
  import jax
  from arjax import parallel
  from arjax.serve.app import limits_of, make_app, serve_async, server_info
  from arjax.serve.batcher import Batcher
  from arjax.serve.engine import Engine
  # One device: the slots are one batch on one chip.
  mesh = parallel.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
  try:
    fm, variables, config = loading.load(workdir, step, mesh=mesh)
  except (OSError, ValueError) as e:
    sock.close()
    return _fail(f"workdir {args.workdir!r}: checkpoint step {step} cannot be loaded: {e}")
  try:
    engine = Engine(fm, variables, config, slots=args.slots)
  except ValueError as e:
    sock.close()
    return _fail(f"workdir {args.workdir!r}: {e}")
  engine.warmup()  # compile before the first request.
  batcher = Batcher(engine, args.queue).start()
  app = make_app(engine, batcher, limits_of(engine, config, args.max_images),
                 server_info(engine, config, workdir, step))
  port = sock.getsockname()[1]

  def ready():
    print(f"serving http://{HOST}:{port} (workdir {workdir}, step {step}, slots {args.slots}, "
          f"queue {args.queue})", flush=True)

  code = asyncio.run(serve_async(app, sock, on_ready=ready))
  print(f"stopped: {batcher.completed} requests answered, {batcher.rejected} refused (queue "
        f"full)", flush=True)
  return code


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(cli.run(main))
