"""Cost of one continuous-batching decode step (`arjax.serve.engine.Engine.step`) vs slots.

  python benchmarks/serve_step.py [--workdir W] [--slots 1,4,8,16] [--steps 100]

For each slot count, builds an Engine over the run, fills every slot at a distinct cache
position (no reset inside the timed steps) and times `--steps` steps (process CPU time and wall
time per step, best of 3). Each is measured twice in one process: with the one-query decode
attention that `kernels.attention(impl='xla')` takes on CPU (`attention_one_query`) and with the
einsum form (`attention_reference`) it replaced, interleaved so machine noise hits both. Prints
ms per step, the cost relative to 1 slot, and tokens per CPU second.

Default run: the quickstart model that `benchmarks/serve.py` trains into
/tmp/arjax_serve_bench/quickstart.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def engine_for(fm, variables, config, slots: int, form: str):
  from arjax import kernels
  from arjax.serve.engine import Engine
  eng = Engine(fm, variables, config, slots=slots)
  einsum = lambda q, k, v, spec, scale=None: kernels.attention_reference(q, k, v, spec, scale=scale)
  with mock.patch.object(kernels, "attention_one_query",
                         einsum if form == "einsum" else kernels.attention_one_query):
    eng.warmup()  # traces (and compiles) the step under the chosen form.
  return eng


def time_steps(eng, steps: int):
  import numpy as np
  from arjax.serve import engine as E
  ints, floats = eng.empty_inputs()
  ints[:, E.ACTIVE] = 1
  ints[:, E.SEED] = np.arange(eng.slots)
  eng.step(ints, floats)  # resets every slot at index 0.
  ints[:, E.INDEX] = 1 + (np.arange(eng.slots) * 7) % (eng.num_tokens - steps - 2)
  best = None
  for _ in range(3):
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
      ints[:, E.PREV] = eng.step(ints, floats)
      ints[:, E.INDEX] += 1
    ints[:, E.INDEX] -= steps
    c, w = (time.process_time() - c0) / steps, (time.perf_counter() - w0) / steps
    best = (c, w) if best is None or c < best[0] else best
  return best


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="/tmp/arjax_serve_bench/quickstart")
  p.add_argument("--slots", default="1,4,8,16")
  p.add_argument("--steps", type=int, default=100)
  args = p.parse_args(argv)
  import jax
  from arjax import loading
  fm, variables, config = loading.load(args.workdir)
  slots = [int(s) for s in args.slots.split(",")]
  print(f"backend {jax.default_backend()}, {os.cpu_count()} cores, load {os.getloadavg()}")
  res = {}
  for s in slots:
    engines = {f: engine_for(fm, variables, config, s, f) for f in ("one_query", "einsum")}
    for f, eng in engines.items():
      res[(s, f)] = time_steps(eng, args.steps)
    print(f"slots {s:3d} (rows {engines['einsum'].rows:3d}): " + ", ".join(
        f"{f} {res[(s, f)][0] * 1e3:.2f} ms cpu / {res[(s, f)][1] * 1e3:.2f} ms wall"
        for f in engines) + f"; einsum/one_query cpu {res[(s, 'einsum')][0] / res[(s, 'one_query')][0]:.2f}x",
        flush=True)
  base = {f: res[(slots[0], f)][0] for f in ("one_query", "einsum")}
  print(f"| slots | one_query ms/step (cpu) | x {slots[0]}-slot | tokens/cpu-s | einsum ms/step | x {slots[0]}-slot | tokens/cpu-s |")
  print("|---|---|---|---|---|---|---|")
  for s in slots:
    a, b = res[(s, "one_query")][0], res[(s, "einsum")][0]
    print(f"| {s} | {a * 1e3:.2f} | {a / base['one_query']:.2f} | {s / a:.0f} | {b * 1e3:.2f} | "
          f"{b / base['einsum']:.2f} | {s / b:.0f} |")
  print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
  main()
