"""python -m arjax.sample --workdir DIR [--num N] [--cfg_scale S] [--temperature T] [--top_k K]
                         [--top_p P] [--sampler NAME] [--window W] [--gsd_radius R]
                         [--gsd_tol T] [--max_tries M] [--seed X] [--out PREFIX] [--resolution R]
                         [--scales 1,2,3,...] [--edit_image PNG --edit_mask PNG|box:R0,C0,R1,C1]

Samples class-conditional images from the latest checkpoint of a run (classes cycle 0, 1, ...)
and writes PREFIX.png (a grid, one column per class) and PREFIX.npz (images, labels, tokens).
A text model (tokenizer 'char' or 'sequence') prints its samples and writes them to PREFIX.txt.
The run is loaded with `arjax.load` (parameters and model state only: no optimizer, no data).

Next-scale models (sampler 'next_scale'):
  --scales 1,2,3,4,5,7,10   FlexVAR samples at any increasing list from its first side up to its
                            position map (model.pos_grid); a list ending above the tokenizer
                            grid decodes a larger latent to larger images. VAR refuses any list
                            but its training scales.
  --edit_image PNG --edit_mask PNG|box:R0,C0,R1,C1
                            zero-shot editing (VAR's inpainting / outpainting / class edit): the
                            image (the tokenizer's image size) is tokenized and the cells the mask
                            keeps are fixed at every scale (arjax.sampling.next_scale). Mask PNG:
                            the image size or the token grid, bright (> 127) = keep; box: the
                            pixel rows R0..R1-1, columns C0..C1-1 are redrawn, the rest kept.
                            The classes cycle 0, 1, ... as usual (a class edit: another class).
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
  p.add_argument("--scales", default=None,
                 help="next-scale: comma-separated increasing sides to sample at (FlexVAR: any "
                 "list; VAR: only its training scales)")
  p.add_argument("--edit_image", default=None,
                 help="next-scale editing: PNG of the image to edit (with --edit_mask)")
  p.add_argument("--edit_mask", default=None,
                 help="next-scale editing: PNG mask (bright = keep) or box:R0,C0,R1,C1 (pixels "
                 "to redraw)")
  args = p.parse_args(argv)
  if args.num <= 0:
    p.error(f"--num must be positive, got {args.num}")
  scales = parse_scales(p, args.scales)
  if (args.edit_image is None) != (args.edit_mask is None):
    missing = "--edit_mask" if args.edit_mask is None else "--edit_image"
    p.error(f"{missing}: next-scale editing needs both --edit_image and --edit_mask")
  if args.edit_image is not None and (scales is not None or args.resolution):
    p.error("--edit_image: editing runs at the model's training scales (no --scales or "
            "--resolution)")
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
  f_hat = None  # a next-scale sampler's final latent, decoded by `images_of`.
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
    if scales is not None or args.edit_image is not None:
      if not hasattr(sampler, "sample_with_fhat"):
        flag = "--scales" if scales is not None else "--edit_image"
        p.error(f"{flag}: next-scale models only (sampler 'next_scale'); this run's sampler is "
                f"{sampler.name!r}")
      known = given = None
      if args.edit_image is not None:
        known, given = edit_arrays(p, args, fm.bind(params).tokenizer, args.num)
      try:
        tokens, f_hat = sampler.sample_with_fhat(params, labels, jax.random.key(args.seed),
                                                 scales, known=known, given=given)
      except ValueError as err:
        p.error(f"{'--scales' if scales is not None else '--edit_mask'}: {err}")
    elif hasattr(sampler, "images_of"):  # next-scale: HART decodes f_hat + its residual.
      tokens, f_hat = sampler.sample_with_fhat(params, labels, jax.random.key(args.seed))
    else:
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
  if f_hat is not None:  # next-scale: the final latent (any side; HART's + residual).
    images = np.asarray(sampler.images_of(params, tokens, f_hat, scales))
  else:
    images = np.asarray(tokenizer.decode(tokens))
  seconds = time.time() - t0
  prefix = args.out or os.path.join(args.workdir, "samples", f"sample_seed{args.seed}")
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  save_grid(images, prefix + ".png", ncol=min(ncls, args.num), scale=2)
  np.savez(prefix + ".npz", images=images, labels=np.asarray(labels), tokens=np.asarray(tokens))
  print(json.dumps({"step": step, "num": args.num, "png": prefix + ".png", "npz": prefix + ".npz",
                    "seconds": round(seconds, 2), **sampling.__dict__}))
  return 0


def parse_scales(p, text):
  """'1,2,3,5' -> (1, 2, 3, 5); None -> None; not integers / not increasing -> p.error."""
  if text is None:
    return None
  try:
    scales = tuple(int(x) for x in text.split(","))
  except ValueError:
    p.error(f"--scales: {text!r} is not a comma-separated list of integers")
  if scales[0] < 1 or any(b <= a for a, b in zip(scales, scales[1:])):
    p.error(f"--scales: {list(scales)} must be positive and strictly increasing")
  return scales


def _read_png(p, flag, path):
  from PIL import Image
  try:
    with Image.open(path) as im:
      return np.asarray(im)
  except (OSError, ValueError) as err:
    p.error(f"{flag}: cannot read {path!r} as an image ({err})")


def edit_arrays(p, args, tokenizer, num):
  """--edit_image / --edit_mask -> (known float32 [G, G] on the token grid, given int32 [num,
  N]: the image's multi-scale tokens): the sampler turns the grid mask into per-scale masks
  (arjax.sampling.next_scale.edit_masks). One p.error line naming the flag otherwise."""
  from arjax.models.autoencoder import frozen_autoencoder
  ae = frozen_autoencoder(tokenizer)
  if ae is None:
    p.error("--edit_image: the run's tokenizer has no encoder (set tokenizer.checkpoint)")
  size, ch, (g, _) = int(ae.image_size), int(ae.channels), tuple(ae.grid)
  img = _read_png(p, "--edit_image", args.edit_image)
  if img.ndim == 2:
    img = img[..., None]
  if img.shape[:2] != (size, size):
    p.error(f"--edit_image: {args.edit_image!r} is {img.shape[1]}x{img.shape[0]}; expected the "
            f"tokenizer's image size {size}x{size}")
  if ch == 1 and img.shape[-1] >= 3:  # RGB(A) -> grey.
    img = img[..., :3].mean(-1, keepdims=True).round()
  img = img[..., :ch] if img.shape[-1] >= ch else np.repeat(img[..., :1], ch, -1)
  given = np.asarray(ae.encode(img[None].astype(np.uint8)))
  spec = args.edit_mask
  if spec.startswith("box:"):
    try:
      r0, c0, r1, c1 = (int(x) for x in spec[4:].split(","))
    except ValueError:
      p.error(f"--edit_mask: {spec!r}; expected box:R0,C0,R1,C1 (four integers)")
    if not (0 <= r0 < r1 <= size and 0 <= c0 < c1 <= size):
      p.error(f"--edit_mask: {spec!r}; expected 0 <= R0 < R1 <= {size} and 0 <= C0 < C1 <= {size}")
    keep = np.ones((size, size), np.float32)
    keep[r0:r1, c0:c1] = 0.0
  else:
    m = _read_png(p, "--edit_mask", spec)
    if m.ndim == 3:
      m = m[..., :3].mean(-1)
    if m.shape not in ((size, size), (g, g)):
      p.error(f"--edit_mask: {spec!r} is {m.shape[1]}x{m.shape[0]}; expected the image size "
              f"{size}x{size} or the token grid {g}x{g}")
    keep = (m > 127).astype(np.float32)
  if keep.shape[0] != g:  # pixels -> the token grid: the kept fraction of each cell's patch.
    f = size // g
    keep = keep.reshape(g, f, g, f).mean((1, 3))
  return keep, np.repeat(given, num, 0)


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  sys.exit(cli.run(main))
