"""Quickstart: class-conditional raster AR on bundled MNIST (14x14, 8 grey levels).

  python -m arjax.train --config configs/quickstart.py --workdir workdirs/quickstart

Trains a 0.8M-parameter Llama-style transformer (4 layers, width 128, 2D RoPE) for 1200 steps
of 32 images on a 2-core CPU in about 5 minutes, then samples a 10x8 class grid and reports the
test bits/dim (see README for the figure reached). `:smoke` runs the same code for a few steps.
"""
from arjax.config import base_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.data.source = "mnist"
  c.data.pp = ""
  c.train.batch_size = 32
  c.train.num_steps = 1200
  c.train.lr = 2e-3
  c.train.warmup_steps = 100
  c.train.log_every = 50
  c.train.eval_every = 100_000  # evaluate once, at the end.
  c.train.checkpoint_every = 400
  c.eval.num_examples = -1
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
