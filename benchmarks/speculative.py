"""Speculative Jacobi decoding (sjd, mc_sjd, gsd; continuous_sjd) vs cached raster decoding,
same model and process.

  python benchmarks/speculative.py --workdir RUN [--batches 1 16] [--windows 4 8 16]
                                   [--temperature 1.0] [--top_k 0] [--cfg_scale 1.0] [--json OUT]
  python benchmarks/speculative.py --smoke       # tiny random model, one repeat (acceptance
                                                 # of random weights means nothing)
  python benchmarks/speculative.py --smoke --continuous   # the same on the causal continuous
                                   # AR (configs/continuous/causal.py:head=gmm,smoke), random

A run whose head is continuous (the GMM head: configs/continuous/causal.py:head=gmm) is
benchmarked with 'continuous_sjd' (the default samplers for it); the rows then also give the
mean residual draws and fallbacks (residual draws that hit --max_tries) per image, and the
greedy check is skipped (continuous_sjd needs temperature > 0).

RUN: a trained raster_ar workdir (arjax.load). For each batch size and window it prints forward
passes per image (the passes the batch ran: it runs until its slowest row is done; and the mean
over rows of the passes each row needed) against the sequential sampler's N, and images/s
relative to the KV-cached sequential sampler, timed interleaved in the same process. Also checks
that greedy (temperature 0) SJD gives the sequential sampler's tokens. `rows(...)` is the
importable core (benchmarks/sampling.py).

Legend: N tokens per image, W window.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import hardware, time_interleaved

SPECULATIVE = ("sjd", "mc_sjd", "gsd")


def rows(fm, params, *, batches: Sequence[int] = (1, 16), windows: Sequence[int] = (8,),
         samplers: Sequence[str] = SPECULATIVE, sampling=None, repeats: int = 3,
         seed: int = 0, num_classes: int = 10) -> List[Dict]:
  """One dict per (batch, sampler, window) plus the sequential baseline per batch:
  sampler, window, batch, passes (forward passes the batch ran per image-batch), row_passes
  (mean over rows of the passes each needed), pass_reduction (N / passes), images_per_s and
  speed_vs_sequential (images/s ratio, timed interleaved with the sequential sampler)."""
  from arjax.sampling import SAMPLERS, SamplingConfig, SequentialSampler, SpeculativeOptions
  sampling = sampling or SamplingConfig()
  max_tries = sampling.max_tries
  n = fm.bind(fm.abstract_params).tokenizer.tokens_per_image
  out = []
  key = jax.random.key(seed)
  for b in batches:
    labels = jnp.arange(b, dtype=jnp.int32) % num_classes
    seq = SequentialSampler(fm, sampling)
    fns = {"sequential": lambda s=seq: s.sample_tokens(params, labels, key)}
    meta = {"sequential": dict(sampler="sequential", window=1, batch=b, passes=n,
                               row_passes=float(n))}
    for name in samplers:
      for w in windows:
        s = SAMPLERS.get(name)(fm, dataclasses.replace(sampling, max_tries=100),
                               options=SpeculativeOptions(window=w, max_tries=max_tries))
        _, st = s.sample_with_stats(params, labels, key)
        tag = f"{name}/W{w}"
        fns[tag] = lambda s=s: s.sample_tokens(params, labels, key)
        meta[tag] = dict(sampler=name, window=w, batch=b, passes=int(st["passes"]),
                         row_passes=float(st["row_passes"].mean()),
                         residual_draws=float(st["residual_draws"].mean()),
                         fallbacks=float(st["fallbacks"].mean()))
    times = time_interleaved(fns, repeats=repeats)
    for tag, m in meta.items():
      ips = b / times[tag]
      out.append(dict(m, pass_reduction=n / m["passes"], row_pass_reduction=n / m["row_passes"],
                      seconds=times[tag], images_per_s=ips,
                      speed_vs_sequential=ips / (b / times["sequential"])))
  return out


def greedy_identical(fm, params, window: int, batch: int = 4) -> bool:
  """Greedy SJD and MC-SJD give the sequential sampler's tokens (same model, CFG off)."""
  from arjax.sampling import (MCSJDSampler, SamplingConfig, SequentialSampler, SJDSampler,
                              SpeculativeOptions)
  greedy = SamplingConfig(temperature=0.0)
  labels = jnp.arange(batch, dtype=jnp.int32) % 10
  want = np.asarray(SequentialSampler(fm, greedy).sample_tokens(params, labels,
                                                                jax.random.key(0)))
  return all(bool((np.asarray(S(fm, greedy, options=SpeculativeOptions(window=window))
                              .sample_tokens(params, labels, jax.random.key(1))) == want).all())
             for S in (SJDSampler, MCSJDSampler))


def table(rs: List[Dict], n: int) -> str:
  lines = ["| batch | sampler | W | passes (batch) | N / passes | mean row passes | N / row passes "
           "| images/s | vs sequential |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rs:
    lines.append(f"| {r['batch']} | {r['sampler']} | {r['window']} | {r['passes']} | "
                 f"{r['pass_reduction']:.2f}× | {r['row_passes']:.1f} | "
                 f"{r['row_pass_reduction']:.2f}× | {r['images_per_s']:.2f} | "
                 f"{r['speed_vs_sequential']:.2f}× |"
                 + (f" residual draws {r['residual_draws']:.1f}, fallbacks {r['fallbacks']:.2f}"
                    " per image" if r["sampler"] == "continuous_sjd" else ""))
  return "\n".join(lines)


def smoke_model(continuous: bool = False, head: str = "gmm"):
  from arjax.config import base_config
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  if continuous:
    from arjax.config import load_config
    c = load_config(f"configs/continuous/causal.py:head={head},smoke")
    c.mesh.data = 1
    fm = FunctionalModel(build_model(c, seed=0))
    return fm, fm.initial_params(), c
  c = base_config()
  c.tokenizer.levels, c.tokenizer.resolution = 4, 4
  b = c.model.backbone
  b.num_layers, b.dim, b.num_heads, b.multiple_of = 1, 32, 2, 16
  c.mesh.data = 1
  fm = FunctionalModel(build_model(c, seed=0))
  return fm, fm.initial_params(), c


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default=None, help="a trained raster_ar run (arjax.load)")
  p.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 16")
  p.add_argument("--windows", type=int, nargs="+", default=None, help="default: 4 8 16")
  p.add_argument("--samplers", nargs="+", default=None,
                 help="default: sjd mc_sjd gsd; continuous_sjd for a continuous head")
  p.add_argument("--continuous", action="store_true",
                 help="with --smoke: the causal continuous AR with the GMM head")
  p.add_argument("--head", default="gmm", choices=("gmm", "diffusion"),
                 help="with --smoke --continuous: the continuous head")
  p.add_argument("--max_tries", type=int, default=100,
                 help="continuous_sjd: proposals of the residual's acceptance-rejection")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--cfg_scale", type=float, default=1.0)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", default=None, help="write the rows here")
  p.add_argument("--smoke", action="store_true", help="tiny random model, one repeat")
  args = p.parse_args(argv)
  from arjax.sampling import SamplingConfig
  if args.smoke:
    fm, params, config = smoke_model(args.continuous, args.head)
    # Batches / windows given on the command line are kept (a random-weight pass count).
    args.batches, args.windows = args.batches or [1, 2], args.windows or [4]
    args.repeats = 1
    what = "smoke: random weights (acceptance means nothing)"
  elif args.workdir:
    from arjax import loading
    fm, params, config = loading.load(args.workdir)
    what = f"trained run {args.workdir} (step {loading.resolve_step(args.workdir, None)})"
  else:
    p.error("give --workdir RUN (a trained raster_ar run) or --smoke")
  args.batches, args.windows = args.batches or [1, 16], args.windows or [4, 8, 16]
  n = fm.bind(params).tokenizer.tokens_per_image
  continuous = fm.bind(params).tokenizer.vocab_size == 0
  args.samplers = args.samplers or (["continuous_sjd"] if continuous else list(SPECULATIVE))
  sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k,
                            cfg_scale=args.cfg_scale, max_tries=args.max_tries)
  # Greedy decoding has no density: the identity check is for the categorical samplers.
  same = (None if continuous else
          greedy_identical(fm, params, max(w for w in args.windows if w <= n - 1)))
  rs = rows(fm, params, batches=args.batches, windows=args.windows, samplers=args.samplers,
            sampling=sampling, repeats=args.repeats)
  print(f"hardware: {hardware()}")
  print(f"model: {what}; {fm.param_count():,} params; N = {n} tokens, "
        + (f"continuous (C = {fm.bind(params).tokenizer.token_dim}); max_tries "
           f"{args.max_tries}" if continuous else
           f"vocabulary {fm.bind(params).tokenizer.vocab_size}")
        + f"; sampling: temperature {args.temperature}, top_k {args.top_k}, cfg "
        f"{args.cfg_scale}; greedy sjd/mc_sjd == sequential: "
        + ("n/a (continuous)" if continuous else str(same)))
  print(table(rs, n))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"hardware": hardware(), "model": what, "tokens": n, "greedy_identical": same,
                 "sampling": vars(sampling), "rows": rs}, f, indent=1)
  return 0 if same in (None, True) else 1


if __name__ == "__main__":
  sys.exit(main())
