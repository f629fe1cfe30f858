"""Quickstart: class-conditional raster AR on bundled MNIST (14x14, 8 grey levels).

  python -m arjax.train --config configs/quickstart.py --workdir workdirs/quickstart

Trains a 0.45M-parameter Llama-style transformer (4 layers, width 96, 2D RoPE) for 400 steps of
32 images (about 6 minutes on a 2-core CPU), then samples a 10x8 class grid with CFG 2.0 and
reports bits/dim on the first 2000 test images (~0.61; see README). `:smoke` runs the same code
for a few steps.
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.data.source = "mnist"
  c.data.pp = ""
  c.model.backbone.dim = 96
  c.model.backbone.num_heads = 4
  c.model.backbone.num_layers = 4
  c.model.backbone.multiple_of = 32
  c.train.batch_size = 32
  c.train.num_steps = 400
  c.train.lr = 3e-3
  c.train.warmup_steps = 40
  c.train.log_every = 50
  c.train.eval_every = 100_000  # evaluate once, at the end.
  c.train.checkpoint_every = 200
  c.eval.num_examples = 2000    # the first 2000 test images (the whole split: --num_examples -1).
  c.eval.cfg_scale = 2.0
  if args.smoke:
    c.train.batch_size = 8
    c.train.num_steps = 6
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.eval.num_examples = 64
    c.eval.batch_size = 32
    c.eval.samples_per_class = 1
    c.model.backbone.num_layers = 1
    c.model.backbone.dim = 32
    c.model.backbone.num_heads = 2
  return c
