"""Train-step throughput and MFU of a LlamaGen-size model on the local accelerators.

  python benchmarks/mfu.py [--size L] [--batch_per_device 32] [--mesh data=-1]
                           [--steps 20] [--peak_tflops 989] [--dtype bfloat16] [--smoke]

Runs arjax's real train step (the one `arjax.train` jits: bf16 compute, f32 params and AdamW,
gradient clipping, non-finite check) for configs/imagenet256/llamagen.py at --size (default L,
343M parameters, 256 tokens of a 16384-code VQ tokenizer) on synthetic token batches, sharded
over every local device with the config's logical-axis rules and --mesh. Prints tokens/s per
device, achieved TFLOP/s per device from the analytic FLOP count (`arjax.train.flops`, the same
count `arjax.inspect` prints) and MFU = achieved / --peak_tflops (989: an H100 SXM's dense bf16
peak; use 312 for an A100, 459 for a TPU v5p chip), plus XLA's per-device peak memory.

--smoke shrinks the model to run the same code in seconds on a CPU (no meaningful MFU there).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

from benchmarks.common import hardware


def make_config(args):
  from arjax.config import load_config
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(root, "configs", "imagenet256", "llamagen.py")
                       + f":size={args.size}")
  config.unlock()
  b = config.model.backbone
  b.dtype = args.dtype
  if args.smoke:
    b.num_layers, b.num_heads, b.dim, b.multiple_of = 1, 2, 64, 64
    config.tokenizer.vocab_size, config.tokenizer.grid = 512, 4
  config.train.batch_size = args.batch_per_device * jax.device_count()
  return config


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--size", default="L", help="LlamaGen size: B, L, XL, XXL, 3B")
  ap.add_argument("--batch_per_device", type=int, default=32, help="images per device per step")
  ap.add_argument("--mesh", default="data=-1", help="e.g. data=-1 or fsdp=8 (over all devices)")
  ap.add_argument("--steps", type=int, default=20, help="timed steps (after 3 warm-up steps)")
  ap.add_argument("--peak_tflops", type=float, default=989.0,
                  help="dense peak TFLOP/s per device for the compute dtype (H100 bf16: 989)")
  ap.add_argument("--dtype", default="bfloat16", help="compute dtype")
  ap.add_argument("--smoke", action="store_true", help="tiny model, 2 steps: runs on a CPU")
  args = ap.parse_args(argv)
  if args.smoke:
    args.batch_per_device, args.steps = 2, 2

  from arjax import parallel
  from arjax.train import memory
  from arjax.parallel.checks import parse_mesh
  from arjax.train.flops import model_flops

  config = make_config(args)
  mesh = parallel.make_mesh(parse_mesh(args.mesh))  # -1: all remaining devices.
  parts = memory.TrainStepParts(config, mesh)
  t0 = time.time()
  compiled = parts.step.lower(parts.state_spec, parts.batch_spec).compile()
  compile_s = time.time() - t0
  mem = memory.compiled_memory(compiled)
  state = parts.init()
  rng = np.random.default_rng(0)
  host = {"tokens": rng.integers(0, config.tokenizer.vocab_size, parts.batch_spec["tokens"].shape,
                                 dtype=np.int32),
          "label": rng.integers(0, config.model.num_classes, parts.batch_spec["label"].shape,
                                dtype=np.int32)}
  batch = {k: jax.device_put(v, parts.batch_spec[k].sharding) for k, v in host.items()}
  for _ in range(3):  # warm-up: first-run allocations, autotuning.
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  loss = float(metrics.compute()["loss"])
  step_s = statistics.median(times)
  flops = model_flops(config)
  n = jax.device_count()
  tokens_per_s = flops["tokens_per_step"] / step_s
  tflops = flops["train_flops_per_step"] / step_s / n / 1e12
  print(f"hardware: {hardware()}")
  print(f"model: llamagen size={args.size}{' (smoke)' if args.smoke else ''}, "
        f"{parts.fm.param_count():,} params, {args.dtype}; {flops['seq_len']} tokens x batch "
        f"{config.train.batch_size} ({args.batch_per_device}/device), mesh "
        f"{dict(mesh.shape)}; train FLOPs/step {flops['train_flops_per_step']:.3e}")
  print(f"compile {compile_s:.1f}s; per-device peak memory {mem.get('peak', 0) / 2**30:.2f} GiB; "
        f"loss {loss:.3f}")
  print(f"step {step_s * 1e3:.1f} ms (median of {args.steps}); "
        f"{tokens_per_s / n:,.0f} tokens/s/device; {tflops:.1f} TFLOP/s/device; "
        f"MFU {100 * tflops / args.peak_tflops:.1f}% of {args.peak_tflops:g} TFLOP/s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
