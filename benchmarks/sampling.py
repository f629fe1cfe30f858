"""Sampling speed of every order against KV-cached raster decoding (same model size, same process).

  python benchmarks/sampling.py [--layers 2] [--dim 128] [--batches 1,32] [--repeats 3]
                                [--clock wall|cpu] [--max_segments K] [--smoke]

For each order, with its default sampler (`model.default_sampler()`: 'sequential' for raster,
'cached_order' for RandAR / LPD / PAR / NAR, 'cached_groups' for ARPG, 'order' for MaskGIT) and,
at batch 1, the recomputing 'order' sampler as well, it prints: sampling steps, forward passes
per image (model calls in the sampling loop; a cached step feeds a few slots, a recomputing step
the whole layout), slots fed per image (in parentheses with each step's padding: the cached
samplers pad a step to the largest step of its segment), images/s and the ratio to raster's
images/s timed interleaved (wall seconds, or with --clock cpu this process's CPU seconds), the
issue's goal at batch 1 (images/s >= 0.5 x raster steps / steps x raster's),
and the bytes of the KV cache arrays the batch holds.

Rows come from the functions in ROW_BUILDERS, each `builder(ctx) -> List[Row]`; another script
adds its rows with one import that appends its builder (e.g. speculative samplers on ctx's
raster model) before `main()` runs.

Legend: N tokens per image (16 x 16 = 256), B batch.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp

from benchmarks.common import block, hardware, time_interleaved

# The order configs of the table: the papers' step counts for 256 tokens where they give one.
ORDER_CONFIGS: Dict[str, Dict] = {
    "raster": dict(model="raster_ar", order={}),
    "randar": dict(model="ordered_ar", order=dict(num_steps=88)),       # RandAR's K = 88.
    "lpd": dict(model="ordered_ar", order=dict(locality_orders=0)),     # LPD's 20-step table.
    "par": dict(model="ordered_ar", order=dict(regions=4)),             # PAR-4x: 67 steps.
    "nar": dict(model="nar", order={}),                                 # 2H - 1 = 31 steps.
    "arpg": dict(model="arpg", order=dict(num_steps=64)),               # ARPG's 64 steps.
    "masked": dict(model="ordered_ar", order=dict(num_steps=8)),        # MaskGIT's 8 steps.
}


@dataclasses.dataclass
class Row:
  name: str               # order / sampler label.
  sampler: str            # registered sampler name.
  steps: int              # sampling steps (model calls in the loop) per image.
  passes: int             # forward passes per image.
  slots: int              # slots fed through the model per image.
  cache_bytes: Callable[[int], int]     # batch -> bytes of the KV cache arrays.
  run: Callable[[jax.Array], object]    # labels [B] -> tokens [B, N].
  params: int = 0
  padded: int = 0         # slots fed per image including the padding of each step (cost).


@dataclasses.dataclass
class Context:
  args: argparse.Namespace
  build: Callable[[str], tuple]          # order name -> (FunctionalModel, config)
  key: jax.Array


def build_model(args, order: str):
  from arjax.config import base_config
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model as build
  spec = ORDER_CONFIGS[order]
  c = base_config()
  c.tokenizer.name, c.tokenizer.vocab_size, c.tokenizer.grid = "cached", 512, args.grid
  c.order.name, c.model.name = order, spec["model"]
  for k, v in spec["order"].items():
    c.order[k] = v
  b = c.model.backbone
  b.num_layers, b.dim, b.num_heads, b.multiple_of = args.layers, args.dim, args.dim // 32, 64
  c.mesh.data = 1
  return FunctionalModel(build(c, seed=0)), c


def _tree_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def order_rows(ctx: Context) -> List[Row]:
  """One row per order with its default sampler; with --recompute, the 'order' sampler too."""
  from arjax.sampling import SamplingConfig, build_sampler
  from arjax.sampling.orders import OrderSampler
  sampling = SamplingConfig(temperature=1.0, cfg_scale=ctx.args.cfg)
  rows = []
  for order in ctx.args.orders.split(","):
    fm, config = ctx.build(order)
    params = fm.initial_params()
    model = fm.bind(params)
    n, g = model.tokenizer.tokens_per_image, (2 if sampling.cfg_scale != 1.0 else 1)
    sampler = build_sampler(fm, sampling, config)
    name = sampler.name
    if name == "sequential":
      steps, slots = n, n + getattr(model, "start_slots", 0)
      cache = lambda b, m=model: _tree_bytes(jax.eval_shape(lambda: m.init_cache(b * g)))
    elif name == "cached_order":
      cp = sampler.plan
      steps, slots, cache = cp.num_steps, cp.fed_slots(), sampler.cache_bytes
      padded = sum((s.stop - s.start) * s.fed for s in sampler.segments)
    elif name == "cached_groups":
      content, _, queries, fed, segs = sampler.group_tables(model)
      steps = content.shape[0]
      # Pass 1 (half the layers): the class + every group's tokens but the last; Pass 2 (the
      # other half): N queries. As full-depth slots: the mean of the two.
      slots = (int(fed.sum()) + n) // 2
      padded = sum((s.stop - s.start) * (int(fed[s.start:s.stop].max()) + s.targets)
                   for s in segs) // 2
      cache = sampler.cache_bytes
    else:  # 'order': every step recomputes the whole layout; nothing cached.
      steps = model.order.num_steps()
      slots = steps * _layout_slots(model)
      cache = lambda b: 0
    passes = steps  # cached_groups: one pass per step (the previous group's tokens + queries).
    if name == "sequential":
      passes = n  # the class slot, then x_0 ... x_(N-2), one call each.
    run = lambda labels, s=sampler, p=params: s.sample_tokens(p, labels, ctx.key)
    rows.append(Row(order, name, steps, passes, slots, cache, run, fm.param_count(),
                    padded if name in ("cached_order", "cached_groups") else slots))
    if ctx.args.recompute and name != "order" and order != "raster":
      full = OrderSampler(fm, sampling)
      k = model.order.num_steps()
      rows.append(Row(f"{order} (recompute)", "order", k, k, k * _layout_slots(model),
                      lambda b: 0, lambda labels, s=full, p=params: s.sample_tokens(
                          p, labels, ctx.key), fm.param_count(), k * _layout_slots(model)))
  return rows


def _layout_slots(model) -> int:
  lay = jax.eval_shape(lambda: model.order.train_layout(jax.random.key(0), 1, 0, False))
  return lay.src.shape[1] + getattr(model, "start_slots", 0)


# Builders of the table's rows; a script with more samplers appends its own (see the docstring).
ROW_BUILDERS: List[Callable[[Context], List[Row]]] = [order_rows]


def cpu_interleaved(fns: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
  """Median CPU seconds (this process, all threads) per call, calls alternating: on a loaded
  machine the time a call spends waiting for a core is not counted."""
  import statistics
  import time
  for f in fns.values():
    block(f())
  samples = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t0 = time.process_time()
      block(f())
      samples[k].append(time.process_time() - t0)
  return {k: statistics.median(v) for k, v in samples.items()}


def measure(rows: List[Row], batch: int, repeats: int, skip_recompute: bool,
            clock: str = "wall") -> List[Dict]:
  labels = jnp.arange(batch, dtype=jnp.int32) % 10
  use = [r for r in rows if not (skip_recompute and r.name.endswith("(recompute)"))]
  fns = {r.name: (lambda r=r: r.run(labels)) for r in use}
  times = (time_interleaved(fns, repeats=repeats) if clock == "wall"
           else cpu_interleaved(fns, repeats))
  raster = next(r for r in use if r.name == "raster")
  base = batch / times["raster"]
  out = []
  for r in use:
    ips = batch / times[r.name]
    goal = 0.5 * raster.steps / r.steps
    out.append(dict(name=r.name, sampler=r.sampler, steps=r.steps, passes=r.passes,
                    slots=r.slots, padded=r.padded or r.slots, ips=ips, ratio=ips / base,
                    goal=goal,
                    cache=r.cache_bytes(batch), params=r.params))
  return out


def print_table(batch: int, results: List[Dict]):
  print(f"\nbatch {batch}")
  print("| order | sampler | params | steps | forward passes / image | slots fed / image "
        "(padded) | images/s | vs raster | goal (batch 1) | KV cache |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    met = ("" if r["name"] == "raster" or batch != 1 else
           f"{r['goal']:.2f}x {'met' if r['ratio'] >= r['goal'] else 'NOT met'}")
    print(f"| {r['name']} | {r['sampler']} | {r['params']:,} | {r['steps']} | {r['passes']} | "
          f"{r['slots']} ({r['padded']}) | {r['ips']:.2f} | {r['ratio']:.2f}x | {met} | "
          f"{r['cache'] / 2**20:.2f} MiB |")


def main(argv=None, builders: Optional[List[Callable[[Context], List[Row]]]] = None):
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--dim", type=int, default=128)
  p.add_argument("--grid", type=int, default=16)
  p.add_argument("--batches", default="1,32")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--cfg", type=float, default=1.0)
  p.add_argument("--orders", default=",".join(ORDER_CONFIGS))
  p.add_argument("--recompute", type=int, default=1,
                 help="also time the recomputing 'order' sampler (batch 1 only)")
  p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                 help="wall seconds, or this process's CPU seconds (a loaded machine)")
  p.add_argument("--max_segments", type=int, default=None,
                 help="segments of the cached samplers (default: theirs; 1: every step padded "
                 "to the run's largest step and full cache, as before segmenting)")
  p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
  args = p.parse_args(argv)
  if args.max_segments is not None:
    if args.max_segments < 1:
      p.error(f"--max_segments={args.max_segments}; expected >= 1")
    from arjax.sampling.cached_groups import CachedGroupSampler
    from arjax.sampling.cached_orders import CachedOrderSampler
    CachedGroupSampler.max_segments = CachedOrderSampler.max_segments = args.max_segments
  if args.smoke:
    args.layers, args.dim, args.grid, args.batches, args.repeats = 2, 64, 4, "1,2", 1
    ORDER_CONFIGS["randar"]["order"]["num_steps"] = 6
    ORDER_CONFIGS["lpd"]["order"]["num_steps"] = 4
    ORDER_CONFIGS["arpg"]["order"]["num_steps"] = 6
  if "raster" not in args.orders.split(","):
    args.orders = "raster," + args.orders
  cache: Dict[str, tuple] = {}

  def build(order):
    if order not in cache:
      cache[order] = build_model(args, order)
    return cache[order]

  ctx = Context(args=args, build=build, key=jax.random.key(0))
  rows = [r for b in (builders or ROW_BUILDERS) for r in b(ctx)]
  print(f"hardware: {hardware()}")
  print(f"model: {args.layers} layers, width {args.dim}, {args.grid}x{args.grid} tokens, "
        f"vocabulary 512, cfg {args.cfg}, temperature 1, float32; clock {args.clock}, "
        f"load average {os.getloadavg()[0]:.1f}")
  for i, batch in enumerate(int(x) for x in args.batches.split(",")):
    print_table(batch, measure(rows, batch, args.repeats, skip_recompute=i > 0,
                               clock=args.clock))
    sys.stdout.flush()
  return 0


if __name__ == "__main__":
  sys.exit(main())
