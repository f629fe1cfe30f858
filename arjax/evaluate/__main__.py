"""python -m arjax.evaluate --workdir DIR [--metrics bpd,recon,fd,prec_rec,fid,sfid,is,iprec_rec] [--num_samples N]
       [--reference stats.npz] [--inception_weights FILE] [--cfg_scale S] [--temperature T]
       [--top_k K] [--top_p P] [--seed X] [--batch_size B] [--out eval.json]

bpd (the default for generators): test bits/dim of the latest checkpoint and a class-conditional
sample grid. recon (the default for tokenizers): reconstruction metrics of the split (PSNR, SSIM,
codebook usage, the VTBench-style detail measures, reconstruction FD and recognition error on
bundled data; --num_examples, default config.eval.num_examples).
fd/prec_rec: N balanced class-conditional samples scored in the offline classifier's feature
space (not comparable with Inception FID); fid/sfid/is/iprec_rec: Flax InceptionV3
(--inception_weights; --reference for fid (mu, sigma), sfid (mu_s, sigma_s) and iprec_rec
(arr_0: ADM's precision/recall, k = 3, in pool3 space)). Writes JSON (WORKDIR/eval.json or --out) and appends a markdown row to
WORKDIR/eval.md. See docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from arjax import cli


def _row(out):
  f = lambda k: "" if out.get(k) is None else (f"{out[k]:.4g}" if isinstance(out[k], float) else str(out[k]))
  return ("| " + " | ".join(f(k) for k in ("step", "num_samples", "cfg_scale", "temperature", "fd",
                                             "class_accuracy", "precision", "recall", "fid", "is",
                                             "bits_per_dim")) + " |")


HEADER = ("| step | N | cfg | T | FD (offline clf.) | acc | precision | recall | FID | IS | bpd |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n")


def main(argv=None):
  p = cli.ArgumentParser(prog="python -m arjax.evaluate", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--metrics", default=None,
                 help="comma-separated (default: bpd for generators, recon for tokenizers)")
  p.add_argument("--split", default="test")
  p.add_argument("--num_examples", type=int, default=None,
                 help="examples for bits/dim (default: config.eval.num_examples)")
  p.add_argument("--num_samples", type=int, default=1000, help="samples for fd/fid/is")
  p.add_argument("--batch_size", type=int, default=64, help="sampling batch (split over data axis)")
  p.add_argument("--reference", default=None, help="ADM-layout .npz (fid; optional for fd)")
  p.add_argument("--inception_weights", default=None)
  p.add_argument("--cfg_scale", type=float, default=None)
  p.add_argument("--temperature", type=float, default=None)
  p.add_argument("--top_k", type=int, default=None)
  p.add_argument("--top_p", type=float, default=None)
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="JSON path (default WORKDIR/eval.json)")
  p.add_argument("--save_features", default=None, help="write sample feature mean/cov .npz")
  args = p.parse_args(argv)

  for name in ("num_samples", "batch_size"):
    if getattr(args, name) < 1:
      p.error(f"--{name}={getattr(args, name)}; expected an integer >= 1")
  if args.num_examples is not None and args.num_examples < 1 and args.num_examples != -1:
    p.error(f"--num_examples={args.num_examples}; expected an integer >= 1 or -1 (all)")
  # The sampling options typed are checked before anything is loaded: one line, at once.
  cli.check_sampling_options(p, args)
  from arjax.evaluate import sample_metrics as sm
  try:
    names = sm.parse_metrics(args.metrics or "bpd")
  except ValueError as e:
    p.error(str(e))
  want_samples = [m for m in names if m in sm.SAMPLE_METRICS]
  if ("fd" in names or "prec_rec" in names) and args.num_samples <= 128:
    # Checked before loading anything: the offline features have F = 128.
    p.error(f"--num_samples {args.num_samples} <= 128, the offline classifier's feature "
            "dimension: the sample covariance for fd would be rank-deficient")
  inception_names = [m for m in names if m in sm.INCEPTION_METRICS]
  if inception_names and not args.inception_weights:
    p.error(f"metrics {inception_names} need --inception_weights FILE")
  if args.inception_weights and not os.path.isfile(args.inception_weights):
    p.error(f"--inception_weights file {args.inception_weights!r} not found")
  if any(m in names for m in ("fid", "sfid", "iprec_rec")) and not args.reference:
    p.error(f"metric(s) {[m for m in names if m in ('fid', 'sfid', 'iprec_rec')]} need "
            "--reference stats.npz")

  import jax
  import numpy as np
  from arjax.evaluate.images import save_grid
  from arjax.sampling import SamplingConfig
  from arjax import loading
  from arjax.train.loop import Experiment

  # Only bits/dim, reconstructions and the offline metrics read the data set.
  reads_data = any(m in names for m in ("bpd", "recon", "fd", "prec_rec"))
  config = loading.load_workdir_config(args.workdir)
  exp = Experiment(config, check_data=reads_data)  # its evaluation methods; no optimizer state.
  # The evaluation parameters and model state only (an Orbax partial restore).
  params, step = loading.restore_variables(args.workdir, exp.fm, config, args.step, exp.mesh)
  if exp.evaluation == "tokenizer":
    if args.metrics is None:
      names = ["recon"]
    if [m for m in names if m != "recon"]:
      p.error(f"--metrics {[m for m in names if m != 'recon']}: {args.workdir} holds a tokenizer "
              "(model.name=autoencoder); it has only 'recon'")
  elif "recon" in names:
    p.error(f"--metrics recon: {args.workdir} holds a generator, not a tokenizer")
  e = exp.config.eval
  pick = lambda v, d: d if v is None else v
  out = {"step": step}
  if "bpd" in names:
    n = e.num_examples if args.num_examples is None else args.num_examples
    bpd = exp.bits_per_dim(params, args.split, n)
    images, _ = exp.sample_grid(params, jax.random.key(args.seed))
    grid = os.path.join(args.workdir, "images", f"eval_samples_{step:07d}.png")
    save_grid(images, grid, ncol=e.samples_per_class, scale=2)
    out.update({"split": args.split, "bits_per_dim": bpd["bits_per_dim"], "nll": bpd["nll"],
                "num_tokens": bpd["num_tokens"], "sample_grid": grid})
  if "recon" in names:
    from arjax.train.evaluation import tokenizer_metrics
    n = e.num_examples if args.num_examples is None else args.num_examples
    values, _ = tokenizer_metrics(exp, params, args.split, n)
    out.update({"split": args.split, **values})
  if want_samples:
    sampling = SamplingConfig(cfg_scale=pick(args.cfg_scale, e.cfg_scale),
                              temperature=pick(args.temperature, e.temperature),
                              top_k=pick(args.top_k, e.top_k), top_p=pick(args.top_p, e.top_p))
    ref = None
    if args.reference and not inception_names:
      # Checked before sampling so that a wrong file fails in seconds, not after N samples.
      ref = sm.check_offline_reference(args.reference, 128)
    samples, labels = sm.generate_samples(exp, params, args.num_samples, args.seed,
                                          args.batch_size, sampling)
    out.update({"num_samples": args.num_samples, "seed": args.seed, **sampling.__dict__})
    if "fd" in names or "prec_rec" in names:
      s = sm.offline_scores(exp.config, samples, labels)
      if args.save_features:
        np.savez(args.save_features, mu=s["feature_mean"], sigma=s["feature_cov"])
      if ref is not None:  # FD against the given statistics instead of the split.
        from arjax.evaluate.metrics import frechet_distance
        s["fd"] = frechet_distance(s["feature_mean"], s["feature_cov"], ref.mu, ref.sigma)
        out["reference"] = args.reference
      out.update({"fd": s["fd"], "class_accuracy": s["class_accuracy"],
                  "fd_space": f"offline {exp.config.data.source} classifier (not Inception FID)"})
      if "prec_rec" in names:
        out.update({"precision": s["precision"], "recall": s["recall"]})
    if inception_names:
      try:
        out.update(sm.inception_scores(samples, args.inception_weights, args.reference,
                                       inception_names))
      except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
  path = args.out or os.path.join(args.workdir, "eval.json")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  if want_samples:
    md = os.path.join(args.workdir, "eval.md")
    new = not os.path.isfile(md)
    with open(md, "a") as f:
      f.write((HEADER if new else "") + _row(out) + "\n")
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(cli.run(main))
