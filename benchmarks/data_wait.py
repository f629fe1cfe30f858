"""How long the training loop waits for data: the input pipeline against the step time.

  python benchmarks/data_wait.py [--config configs/quickstart.py] [--steps 60] [--warmup 5]

Runs the trainer's loop body (`arjax.train.loop`: next batch from the grain pipeline, whose
device stage `DataIterator.to_device(Experiment.to_global)` puts data.device_prefetch batches on
device ahead in a background thread, then the jitted train step dispatched asynchronously) for
--steps steps of the config's shapes after --warmup steps (compilation), and times the part
spent getting the next batch (`next(it)`) against the wall time of the steps.
--device_prefetch 0 measures the pipeline with the transfer in the loop's thread. Prints the data
wait as a fraction of the step time (goal: < 5 %, the pipeline off the critical path) and
steps/s; one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax

from benchmarks.common import hardware


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/quickstart.py")
  p.add_argument("--steps", type=int, default=60)
  p.add_argument("--warmup", type=int, default=5)
  p.add_argument("--device_prefetch", type=int, default=None,
                 help="overrides config.data.device_prefetch")
  args = p.parse_args(argv)

  from arjax import data as data_lib
  from arjax.config import load_config
  from arjax.train.loop import Experiment
  config = load_config(args.config)
  if args.device_prefetch is not None:
    config.data.device_prefetch = args.device_prefetch
  t = config.train
  exp = Experiment(config)
  _, shardings = exp.abstract_state()
  state = exp.init_state()
  step = exp.jit_train_step(shardings)
  it = data_lib.make_iterator(config.data, split="train", global_batch_size=t.batch_size,
                              seed=config.seed, shuffle=True, num_epochs=None)
  it = it.to_device(exp.to_global)   # as the trainer does
  for _ in range(args.warmup):
    state, _ = step(state, next(it))
  jax.block_until_ready(state)

  wait = 0.0
  start = time.perf_counter()
  for _ in range(args.steps):
    t0 = time.perf_counter()
    batch = next(it)
    wait += time.perf_counter() - t0
    state, _ = step(state, batch)
  jax.block_until_ready(state)
  total = time.perf_counter() - start
  it.close()
  out = {"config": args.config, "batch_size": t.batch_size, "steps": args.steps,
         "device_prefetch": config.data.device_prefetch, "prefetch": config.data.prefetch,
         "step_ms": round(1000 * total / args.steps, 2),
         "data_wait_ms": round(1000 * wait / args.steps, 3),
         "data_wait_fraction": round(wait / total, 4),
         "steps_per_second": round(args.steps / total, 2), "hardware": hardware()}
  print(f"{args.config}: step {out['step_ms']} ms, waiting for data {out['data_wait_ms']} ms "
        f"per step = {100 * out['data_wait_fraction']:.2f} % of the step time (goal < 5 %)")
  print(json.dumps(out))


if __name__ == "__main__":
  main()
