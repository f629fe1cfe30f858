"""python -m arjax.evaluate --workdir DIR [--split test] [--num_examples N] [--metrics bpd]

Reports test bits/dim of the latest checkpoint as JSON (also written to WORKDIR/eval.json) and
writes a class-conditional sample grid.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m arjax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--split", default="test")
  p.add_argument("--num_examples", type=int, default=None,
                 help="examples for bits/dim (default: config.eval.num_examples)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  import jax
  from arjax.evaluate.images import save_grid
  from arjax.train.restore import load_run

  exp, state, step = load_run(args.workdir, args.step)
  params = exp.eval_params(state)
  n = exp.config.eval.num_examples if args.num_examples is None else args.num_examples
  bpd = exp.bits_per_dim(params, args.split, n)
  images, _ = exp.sample_grid(params, jax.random.key(args.seed))
  grid = os.path.join(args.workdir, "images", f"eval_samples_{step:07d}.png")
  save_grid(images, grid, ncol=exp.config.eval.samples_per_class, scale=2)
  out = {"step": step, "split": args.split, "bits_per_dim": bpd["bits_per_dim"],
         "nll": bpd["nll"], "num_tokens": bpd["num_tokens"], "sample_grid": grid}
  with open(os.path.join(args.workdir, "eval.json"), "w") as f:
    json.dump(out, f, indent=2)
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(main())
