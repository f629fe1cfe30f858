"""Samples of the GIVT GMM raster model (configs/tokenizers/givt_on_kl.py) with and without CFG,
decoded through its KL tokenizer and scored by the offline MNIST classifier -> docs/heads.md.

  python experiments/givt.py --workdir workdirs/givt_kl --num_samples 500 \
      --out docs/heads_givt.json --grid docs/heads_givt_samples.png

For each CFG scale in --cfg_scales: `--num_samples` balanced class-conditional samples with the
model's default sampler ('sequential', KV-cached) at the config's temperature, decoded to 28x28
pixels through the tokenizer run named by the config, then FD in the offline classifier's
feature space against the bundled MNIST test split, class accuracy of the samples by that
classifier, precision/recall (not Inception FID), and samples/s. The grid: one row per class,
--per_class samples per scale, the scales side by side.

--acceptance N (with --num_samples 0) instead measures, per scale, how often GIVT's guided
rejection sampler accepts a channel (the rest fall back to the conditional component) on the
model's predictions for the first N test images' latents (teacher forcing: the contexts of
real images, conditional and null-class predictions), at the config's temperature.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--cfg_scales", default="1.0,2.0", help="comma-separated CFG scales")
  p.add_argument("--num_samples", type=int, default=500)
  p.add_argument("--batch_size", type=int, default=100)
  p.add_argument("--per_class", type=int, default=6, help="grid columns per scale")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--acceptance", type=int, default=0, help="test images for the acceptance rate")
  p.add_argument("--out", required=True, help="JSON of the scores")
  p.add_argument("--grid", default="", help="PNG grid")
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from arjax.evaluate.images import save_grid
  from arjax.evaluate.sample_metrics import balanced_labels, offline_scores
  from arjax.sampling import build_sampler, sampling_from_config
  from arjax.train.restore import load_run

  exp, state, step = load_run(args.workdir, check_data=False)
  params = exp.eval_params(state)
  config = exp.config
  ref_config = config.copy_and_resolve_references()
  ref_config.data.source = "mnist"   # the images the latents were encoded from.
  ncls = config.model.num_classes
  results = {"workdir": args.workdir, "step": int(step), "num_samples": args.num_samples,
             "temperature": float(config.eval.temperature), "rows": []}
  if args.acceptance:
    results["acceptance"] = acceptance(exp, params, args)
    print(json.dumps(results["acceptance"]), flush=True)
  columns = []
  for scale in ([float(s) for s in args.cfg_scales.split(",")] if args.num_samples > 0 else []):
    sampling = sampling_from_config(config, cfg_scale=scale)
    sampler = build_sampler(exp.fm, sampling, config)
    labels = balanced_labels(args.num_samples, ncls)
    key = jax.random.key(args.seed)
    # One batch first: compiles the loop and restores the tokenizer (reported apart from the
    # timed sampling, which includes decoding to pixels).
    t0 = time.time()
    warm = sampler.sample_tokens(params, jnp.asarray(labels[:args.batch_size]), key)
    np.asarray(exp.fm.bind(params).tokenizer.decode(warm))
    compile_s = time.time() - t0
    t0, images = time.time(), []
    for b in range(0, args.num_samples, args.batch_size):
      lab = jnp.asarray(labels[b:b + args.batch_size])
      tokens = jax.block_until_ready(sampler.sample_tokens(params, lab, jax.random.fold_in(key, b)))
      images.append(np.asarray(exp.fm.bind(params).tokenizer.decode(tokens)))
    seconds = time.time() - t0
    images = np.concatenate(images)
    scores = offline_scores(ref_config, images, labels)
    row = {"cfg_scale": scale, "sampler": sampler.name, "fd": scores["fd"],
           "class_accuracy": scores["class_accuracy"], "precision": scores["precision"],
           "recall": scores["recall"], "samples_per_s": args.num_samples / seconds,
           "first_batch_s": compile_s}
    results["rows"].append(row)
    print(json.dumps(row), flush=True)
    # Grid rows = classes: the first `per_class` samples of each class.
    per = [images[labels == c][:args.per_class] for c in range(ncls)]
    columns.append(np.stack(per))                                  # [classes, per, H, W, C]
  if columns and args.grid:
    grid = np.concatenate(columns, axis=1)                           # scales side by side.
    save_grid(grid.reshape((-1,) + grid.shape[2:]), args.grid, ncol=grid.shape[1], scale=2)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(json.dumps(results, indent=2))


def acceptance(exp, params, args):
  """{scale: fraction of channels accepted} on the first args.acceptance test images."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from arjax import data as data_lib
  it = data_lib.make_iterator(exp.config.data, split="test", global_batch_size=args.acceptance,
                              seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
  batch = next(iter(it))
  x = jnp.asarray(batch["latents"][:args.acceptance])
  labels = jnp.asarray(batch["label"][:args.acceptance], jnp.int32)
  t = float(exp.config.eval.temperature)
  out = {}
  for scale in [float(s) for s in args.cfg_scales.split(",")]:
    def rate(p, key):
      model = exp.fm.bind(p)
      cond = model.forward(x, labels)
      uncond = model.forward(x, jnp.full_like(labels, model.null_class))
      _, ok = cond.guide(uncond, scale).sample_with_acceptance(key, temperature=t)
      return ok.mean()
    out[str(scale)] = float(jax.jit(rate)(params, jax.random.key(args.seed)))
  del it
  return out


if __name__ == "__main__":
  main()
