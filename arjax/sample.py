"""python -m arjax.sample --workdir DIR [--num N] [--cfg_scale S] [--temperature T] [--top_k K]
                         [--top_p P] [--sampler NAME] [--window W] [--gsd_radius R]
                         [--gsd_tol T] [--max_tries M] [--seed X] [--out PREFIX] [--resolution R]

Samples class-conditional images from the latest checkpoint of a run (classes cycle 0, 1, ...)
and writes PREFIX.png (a grid, one column per class) and PREFIX.npz (images, labels, tokens).
A text model (tokenizer 'char' or 'sequence') prints its samples and writes them to PREFIX.txt.
The run is loaded with `arjax.load` (parameters and model state only: no optimizer, no data).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from arjax import cli
import time

import numpy as np


def main(argv=None):
  p = cli.ArgumentParser(prog="python -m arjax.sample", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--num", type=int, default=40, help="number of samples")
  p.add_argument("--cfg_scale", type=float, default=None, help="CFG scale (default: config)")
  p.add_argument("--temperature", type=float, default=None)
  p.add_argument("--top_k", type=int, default=None)
  p.add_argument("--top_p", type=float, default=None)
  p.add_argument("--sampler", default=None,
                 help="sampler registry name (default: config.sampling.name, else the model's)")
  p.add_argument("--window", type=int, default=None,
                 help="speculative samplers (sjd, mc_sjd, gsd): drafts verified per pass "
                 "(default: config.sampling.window; 0: min(16, N - 1))")
  p.add_argument("--gsd_radius", type=int, default=None,
                 help="gsd: group radius in ranks (default: config.sampling.gsd_radius)")
  p.add_argument("--gsd_tol", type=float, default=None,
                 help="gsd: group probability tolerance (default: config.sampling.gsd_tol)")
  p.add_argument("--max_tries", type=int, default=None,
                 help="continuous_sjd: proposals of the residual's acceptance-rejection "
                 "(default: config.sampling.max_tries)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--out", default=None, help="output prefix (default WORKDIR/samples/sample_SEED)")
  p.add_argument("--resolution", type=int, default=None,
                 help="token-grid side to sample at (zero-shot extrapolation, RandAR-style; "
                 "models whose positions come from 2D RoPE only)")
  args = p.parse_args(argv)
  if args.num <= 0:
    p.error(f"--num must be positive, got {args.num}")
  # The sampling options typed are checked before anything is loaded: one line, at once.
  cli.check_sampling_options(p, args)

  import jax
  import jax.numpy as jnp
  from arjax import loading
  from arjax.evaluate.images import save_grid
  from arjax.sampling import build_sampler, sampling_from_config

  # Parameters and model state only: no optimizer, no data set (arjax.load).
  step = loading.resolve_step(args.workdir, args.step)
  fm, params, config = loading.load(args.workdir, step)
  # config.eval's head options and config.sampling's speculative options, unless typed.
  sampling = sampling_from_config(config, **{k: getattr(args, k) for k in (
      "cfg_scale", "temperature", "top_k", "top_p", "window", "gsd_radius", "gsd_tol",
      "max_tries")})
  sampling = dataclasses.replace(sampling, name=args.sampler or "auto")
  ncls = config.model.num_classes
  labels = jnp.arange(args.num, dtype=jnp.int32) % ncls
  t0 = time.time()
  if args.resolution:
    from arjax.sampling.extrapolate import model_at_resolution, sample_at_resolution
    try:
      _, fm = model_at_resolution(config, params, args.resolution)
    except ValueError as err:
      print(f"error: {err}", file=sys.stderr)
      return 2
    tokens = sample_at_resolution(config, params, args.resolution, labels,
                                  jax.random.key(args.seed), sampling)
  else:
    sampler = build_sampler(fm, sampling, config)  # the sampler the model's order needs.
    tokens = sampler.sample_tokens(params, labels, jax.random.key(args.seed))
  tokenizer = fm.bind(params).tokenizer
  if getattr(tokenizer, "is_text", False):  # a text model: print the samples.
    texts = tokenizer.decode_text(np.asarray(jax.device_get(tokens)))
    seconds = time.time() - t0
    for i, t in enumerate(texts):
      print(f"--- sample {i} ---\n{t}")
    prefix = args.out or os.path.join(args.workdir, "samples", f"sample_seed{args.seed}")
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".txt", "w") as f:
      f.write("\n\n----------\n\n".join(texts) + "\n")
    print(json.dumps({"step": step, "num": args.num, "txt": prefix + ".txt",
                      "seconds": round(seconds, 2), **sampling.__dict__}))
    return 0
  images = np.asarray(tokenizer.decode(tokens))
  seconds = time.time() - t0
  prefix = args.out or os.path.join(args.workdir, "samples", f"sample_seed{args.seed}")
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  save_grid(images, prefix + ".png", ncol=min(ncls, args.num), scale=2)
  np.savez(prefix + ".npz", images=images, labels=np.asarray(labels), tokens=np.asarray(tokens))
  print(json.dumps({"step": step, "num": args.num, "png": prefix + ".png", "npz": prefix + ".npz",
                    "seconds": round(seconds, 2), **sampling.__dict__}))
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(cli.run(main))
