"""Shared timing helpers for the benchmarks: interleaved repeats, median, hardware line."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable, Dict

import jax


def hardware() -> str:
  dev = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  return (f"{dev.platform}:{getattr(dev, 'device_kind', '?')} x{jax.device_count()}, "
          f"{os.cpu_count()} host cores ({cpu}), jax {jax.__version__}")


def block(x):
  return jax.block_until_ready(x)


def time_interleaved(fns: Dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
                     ) -> Dict[str, float]:
  """Median seconds per call of each fn; calls alternate so machine noise hits all equally."""
  for _ in range(warmup):
    for f in fns.values():
      block(f())
  samples = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.perf_counter()
      block(f())
      samples[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in samples.items()}
