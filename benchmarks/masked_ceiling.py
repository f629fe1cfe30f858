"""The batch-1 ceiling of MaskGIT (order 'masked') against KV-cached raster decoding here.

  python benchmarks/masked_ceiling.py [--layers 2] [--dim 128] [--grid 16] [--steps 8]

The issue's goal for a parallel order at batch 1 is images/s >= 0.5 x (raster steps / its steps)
x raster's: for MaskGIT at 8 of 256 steps, 16x. A MaskGIT step is one bidirectional pass over
all N + 1 slots; a raster step one cached pass over 1 slot. The script measures (same model size,
the benchmark's, benchmarks/sampling.py): raster's time per step; the time of one masked pass
at batch 1; the FLOPs of each (XLA's cost analysis of the compiled call); and the machine's
throughput on the masked pass at a large batch. From these: the masked / raster images/s ratio
measured, and its ceiling if every masked step were one pass at the best rate seen (batch 1 or
the large batch), ceiling = raster time per image / (steps x masked FLOPs / best rate).

Legend: N tokens per image.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import block, hardware
from benchmarks.sampling import ORDER_CONFIGS, build_model


def _best_of(fn, repeats):
  block(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return min(times)


def _flops(jitted, *args):
  cost = jitted.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"])


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--grid", type=int, default=16)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--big_batch", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args(argv)
  from arjax.sampling import SamplingConfig, build_sampler
  ORDER_CONFIGS["masked"]["order"]["num_steps"] = args.steps
  sampling = SamplingConfig()
  key = jax.random.key(0)

  fm_r, cfg_r = build_model(args, "raster")
  pr = fm_r.initial_params()
  raster = build_sampler(fm_r, sampling, cfg_r)
  one = jnp.zeros((1,), jnp.int32)
  t_raster = _best_of(lambda: raster.sample_tokens(pr, one, key), args.repeats)
  n = fm_r.bind(pr).tokenizer.tokens_per_image
  step_fn = jax.jit(lambda p, c, t: fm_r.bind(p).decode_tokens(t, 7, c)[0].logits)
  caches = fm_r.bind(pr).init_cache(1)
  f_raster = _flops(step_fn, pr, caches, jnp.zeros((1, 1), jnp.int32))

  fm_m, cfg_m = build_model(args, "masked")
  pm = fm_m.initial_params()
  masked = build_sampler(fm_m, sampling, cfg_m)
  t_masked = _best_of(lambda: masked.sample_tokens(pm, one, key), args.repeats)
  model = fm_m.bind(pm)

  def pass_fn(p, tokens, labels, known):
    m = fm_m.bind(p)
    plan = m.order.sample_plan(jax.random.key(1), tokens.shape[0], known)
    return m.grid_dist(tokens, labels, known, plan).logits

  pass_jit = jax.jit(pass_fn)

  def inputs(b):
    return (pm, jnp.zeros((b, n), jnp.int32), jnp.zeros((b,), jnp.int32), jnp.zeros((b, n), bool))

  f_masked = _flops(pass_jit, *inputs(1))
  t_pass1 = _best_of(lambda: pass_jit(*inputs(1)), args.repeats)
  t_big = _best_of(lambda: pass_jit(*inputs(args.big_batch)), args.repeats)
  rate_big = f_masked * args.big_batch / t_big
  best_rate = max(rate_big, f_masked / t_pass1)  # the best rate seen on the masked pass.
  ratio = t_raster / t_masked
  ceiling = t_raster / (args.steps * f_masked / best_rate)
  print(f"hardware: {hardware()}")
  print(f"model: {args.layers} layers, width {args.dim}, {args.grid}x{args.grid} tokens, "
        f"{model.order.name} with {args.steps} steps")
  print(f"raster: {t_raster * 1e3:.1f} ms / image, {t_raster / n * 1e3:.3f} ms / step, "
        f"{f_raster / 1e6:.2f} MFLOP / step, {f_raster / (t_raster / n) / 1e9:.2f} GFLOP/s")
  print(f"masked: {t_masked * 1e3:.1f} ms / image, {t_masked / args.steps * 1e3:.2f} ms / step; "
        f"one pass {t_pass1 * 1e3:.2f} ms at batch 1 ({f_masked / 1e6:.1f} MFLOP, "
        f"{f_masked / t_pass1 / 1e9:.1f} GFLOP/s), {rate_big / 1e9:.1f} GFLOP/s at batch "
        f"{args.big_batch}")
  print(f"masked step / raster step time: {t_masked / args.steps / (t_raster / n):.0f}x; "
        f"FLOPs per step: {f_masked / f_raster:.0f}x")
  print(f"images/s masked / raster: measured {ratio:.2f}x; ceiling with every pass at "
        f"{best_rate / 1e9:.1f} GFLOP/s: {ceiling:.2f}x; goal {0.5 * n / args.steps:.0f}x")
  return 0


if __name__ == "__main__":
  sys.exit(main())
