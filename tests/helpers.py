"""One helper builds every test model and config, with overrides; a persistent compilation
cache for tests that build one program several times."""
from __future__ import annotations

import contextlib
import os
from typing import Any, Dict

import jax

from arjax.config import base_config
from arjax.models import build_model
from arjax.core.functional import FunctionalModel


def tiny_config(**overrides: Any):
  """A small raster AR config on MNIST at 7x7 x 4 levels; overrides as field=value pairs
  with dots replaced by '__' (e.g. model__backbone__dim=64)."""
  c = base_config()
  c.tokenizer.levels = 4
  c.tokenizer.resolution = 7
  b = c.model.backbone
  b.num_layers, b.num_heads, b.dim, b.multiple_of = 2, 4, 32, 16
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.train.eval_every = 1000
  c.train.async_checkpointing = False
  c.eval.num_examples = 16
  c.eval.batch_size = 16
  c.eval.samples_per_class = 1
  c.mesh.data = -1  # all (8 fake) devices
  if overrides.get("tokenizer__name", "pixel") != "pixel":
    # Another tokenizer declares other fields: start its node afresh (the pixel fields above
    # would be undeclared for it).
    c.tokenizer = type(c.tokenizer)({"name": overrides["tokenizer__name"]})
  for key, value in overrides.items():
    node = c
    parts = key.split("__")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = value
  return c


def tiny_model(config=None, seed: int = 0):
  config = config or tiny_config()
  return FunctionalModel(build_model(config, seed=seed)), config


@contextlib.contextmanager
def persistent_compile_cache(path: str):
  """jax's persistent compilation cache at `path` while the block runs, off again after it.

  A test that builds the same program several times (a new Experiment jits afresh: a resumed
  run, a second run of one config, a subprocess) compiles it once: later builds load XLA's
  executable for the identical program from `path`. It cannot change results (same program,
  same executable); a program that differs in any way misses the cache and is compiled.
  """
  from jax._src import compilation_cache
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (path, 0, 0)):
    jax.config.update(n, v)
  compilation_cache.reset_cache()  # jax decides once whether to use the cache: ask again.
  try:
    yield path
  finally:
    for n, v in old.items():
      jax.config.update(n, v)
    compilation_cache.reset_cache()


def compile_cache_env(path: str, **extra: Any) -> Dict[str, str]:
  """os.environ for a subprocess that shares the persistent compilation cache at `path`."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=path,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  env.update({k: str(v) for k, v in extra.items()})
  return env
