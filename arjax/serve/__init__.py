"""Serving a trained run over HTTP with continuous batching: `python -m arjax.serve`.

  engine.py    Engine: S slots' KV caches and one jitted step that advances every slot by one
               token, each slot at its own cache position (a reset slot feeds its class token);
               per-row sampling options and per-request keys, so batching never changes a
               request's tokens.
  batcher.py   Batcher: the bounded queue and the loop (one thread) that refills free slots
               before every step and answers a request when its last image is done.
  protocol.py  the POST /generate body, checked field by field (RequestError names the field).
  app.py       the aiohttp application (/generate, /health) and the SIGTERM drain.
  __main__.py  flags, the startup refusals (no complete checkpoint, port in use: `error: ...`,
               exit 2), loading with `arjax.load`.

An entry point: it imports from every layer below and nothing imports it.
"""
