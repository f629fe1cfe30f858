"""Train-step compile time and compiled temporary memory vs depth: Python loop vs scan over
layers, with and without rematerialisation.

  python benchmarks/compile.py [--layers 4,16,48] [--dim 32] [--tokens 256] [--batch 16]
                               [--remat nothing_saveable] [--smoke]

For every (layers, layout in loop/scan, remat in none/--remat) it builds the real train step
(`arjax.train.step.make_train_step`: loss, grads, AdamW, non-finite check) of a raster AR model
abstractly (no parameters allocated), times `jit(step).lower(...).compile()` and reads
`compiled.memory_analysis().temp_size_in_bytes`. Prints one table and the ratios the goals are
stated in:
  compile(scan, max layers) / compile(scan, min layers)          goal <= 1.3
  temp(remat) / temp(no remat), per layers and layout              goal <= 0.4
The default sequence (256 tokens) and batch make activations, not parameters, dominate the
temporaries. Legend: L layers, D width.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import hardware


def make_config(layers: int, dim: int, tokens: int, batch: int, vocab: int, scan: bool,
                remat: str, dtype: str = "float32"):
  from arjax.config import base_config
  c = base_config()
  grid = int(round(tokens ** 0.5))
  c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.grid = "cached", vocab, grid
  b = c.model.backbone
  b.num_layers, b.dim, b.num_heads, b.multiple_of = layers, dim, max(1, dim // 8), 16
  b.scan_layers, b.remat, b.dtype = scan, remat, dtype
  b.attention_impl = "xla"
  c.train.batch_size = batch
  c.mesh.data = 1
  return c


def compile_train_step(config):
  """(compile seconds, temp bytes, argument bytes) of the jitted train step of `config`."""
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  from arjax.train.optim import learning_rate_schedule, make_optimizer
  from arjax.train.state import initial_state
  from arjax.train.step import make_train_step

  fm = FunctionalModel.abstract(lambda: build_model(config, seed=0))
  tx = make_optimizer(config.train)
  state = jax.eval_shape(lambda p: initial_state(p, tx, 0, False), fm.abstract_params)
  n = config.tokenizer.grid ** 2
  b = config.train.batch_size
  batch = {"tokens": jax.ShapeDtypeStruct((b, n), jnp.int32),
           "label": jax.ShapeDtypeStruct((b,), jnp.int32)}
  step = make_train_step(fm, tx, learning_rate_schedule(config.train), 0.0,
                         config.train.grad_accum_steps)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  return seconds, mem.temp_size_in_bytes, mem.argument_size_in_bytes, fm.param_count()


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--layers", default="4,16,48", help="comma-separated depths")
  ap.add_argument("--dim", type=int, default=32)
  ap.add_argument("--tokens", type=int, default=256, help="sequence length (a square grid)")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--vocab", type=int, default=512)
  ap.add_argument("--remat", default="nothing_saveable", help="the policy compared to none")
  ap.add_argument("--layouts", default="loop,scan")
  ap.add_argument("--smoke", action="store_true", help="2 and 4 layers, 16 tokens: seconds")
  args = ap.parse_args(argv)
  if args.smoke:
    args.layers, args.tokens, args.batch = "2,4", 16, 2
  depths = [int(x) for x in args.layers.split(",")]
  layouts = args.layouts.split(",")
  rows = {}
  print(f"hardware: {hardware()}")
  print(f"model: width {args.dim}, {args.tokens} tokens x batch {args.batch}, vocabulary "
        f"{args.vocab}, float32; train step = loss + grads + AdamW")
  print("| layers | layout | remat | params | compile s | temp MiB | argument MiB |")
  print("|---|---|---|---|---|---|---|")
  for layers in depths:
    for layout in layouts:
      for remat in ("none", args.remat):
        cfg = make_config(layers, args.dim, args.tokens, args.batch, args.vocab,
                          layout == "scan", remat)
        sec, temp, arg, count = compile_train_step(cfg)
        rows[(layers, layout, remat)] = (sec, temp)
        print(f"| {layers} | {layout} | {remat} | {count:,} | {sec:.2f} | {temp / 2**20:.1f} | "
              f"{arg / 2**20:.1f} |", flush=True)
  lo, hi = min(depths), max(depths)
  print()
  for layout in layouts:
    r = rows[(hi, layout, "none")][0] / rows[(lo, layout, "none")][0]
    goal = " (goal <= 1.3)" if layout == "scan" else ""
    print(f"compile time {layout}: {hi} layers / {lo} layers = {r:.2f}x{goal}")
  if "loop" in layouts and "scan" in layouts:
    for layers in depths:
      r = rows[(layers, "scan", "none")][0] / rows[(layers, "loop", "none")][0]
      print(f"compile time at {layers} layers: scan / loop = {r:.2f}x")
  for layers in depths:
    for layout in layouts:
      r = rows[(layers, layout, args.remat)][1] / max(rows[(layers, layout, "none")][1], 1)
      print(f"temp memory {layout} {layers} layers: {args.remat} / none = {r:.2f}x "
            f"(goal <= 0.4)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
