"""Generation orders compared at equal backbone and step budget on bundled MNIST (issue 6).

  python experiments/orders.py                 # every registered order -> docs/orders.md
  python -m arjax.train --config configs/orders/compare.py:order=randar --workdir workdirs/o_randar

One shared experiment (14x14 tokens at 8 grey levels like the quickstart; the same 3-layer
width-64 Llama-style backbone with 2D RoPE, ~0.16M parameters, sized so that every order trains
and samples within ~40 min on a shared 2-core CPU; 200 steps of 32 images, the quickstart's
optimiser); `order=NAME` changes only what the order needs (its own settings below, and RAR's
target-aware table). `steps=K` sets the training budget, `smoke` shrinks everything to seconds.
Results (docs/orders.md): the table written by experiments/orders.py.

Step counts at sampling, for N = 196 tokens (the parallel ones scaled from the papers' 256):
raster and RAR 196 (RAR samples in raster order after annealing), RandAR 49 (cosine n_k,
4x fewer; the paper uses 88 of 256), LPD 24 (arccos groups, the builder's N/8; the paper's
20-step table is for 256 tokens), PAR 4 + 49 - 1 = 52 (4 regions), MaskGIT 8 (cosine), NAR
27 (the anti-diagonals of the 14 x 14 grid, 2 * 14 - 1), ARPG 49 (arccos groups, 4x fewer; the paper uses 64 or 32 of 256).
ARPG and NAR use their own models (`arpg`, `nar`) on the same backbone settings, except that
ARPG's two stacks need an even depth: 2 causal + 2 query blocks (its query blocks have no K/V
projections, so its parameter count stays close to the others').
"""
from arjax.config import base_config, parse_arg

# Order-specific fields, applied over the shared experiment. `steps` is the training budget
# (RAR anneals between the same fractions of it as the paper: epochs 200 and 300 of 400).
ORDER_SETTINGS = {
    "raster": lambda c, steps: None,
    "random": lambda c, steps: _set(c, order=dict(anneal_start=steps // 2,
                                                  anneal_end=(3 * steps) // 4,
                                                  sample_order="raster"),
                                    model=dict(target_aware=True)),
    "randar": lambda c, steps: _set(c, order=dict(schedule="randar", num_steps=49)),
    "lpd": lambda c, steps: _set(c, order=dict(schedule="arccos", num_steps=24)),
    "par": lambda c, steps: _set(c, order=dict(regions=4)),
    "masked": lambda c, steps: _set(c, order=dict(mask_schedule="cosine", num_steps=8,
                                                  reveal="maskgit", loss_on="masked")),
    # ARPG (arjax.models.arpg, when registered): random order, parallel arccos groups, 4x fewer
    # steps (the paper: 64 or 32 of 256).
    "arpg": lambda c, steps: _set(c, order=dict(schedule="arpg_arccos", num_steps=49),
                                  model=dict(name="arpg", backbone=dict(num_layers=4))),
    # NAR (arjax.models.nar): the same backbone plus NAR's extra block and lower-neighbour head.
    "nar": lambda c, steps: _set(c, model=dict(name="nar")),
}

# Orders that cannot take part (with the reason printed in the table); none at present.
UNSUPPORTED = {}


def _set(c, **groups):
  for group, fields in groups.items():
    for k, v in fields.items():
      if isinstance(v, dict):  # a nested group, e.g. model.backbone.
        _set(c[group], **{k: v})
      else:
        c[group][k] = v


def get_config(arg=None):
  args = parse_arg(arg, order="raster", steps=0)
  c = base_config()
  c.data.source = "mnist"
  c.data.pp = ""
  c.model.name = "ordered_ar"       # one model for every order: only the layout changes.
  b = c.model.backbone
  b.dim = 64
  b.num_heads = 4
  b.num_layers = 3
  b.multiple_of = 32
  c.train.batch_size = 32
  c.train.num_steps = args.steps or 200  # the shared budget: 6.4k images (~0.16M parameters).
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 25
  c.train.eval_every = 100_000      # evaluate once, at the end.
  c.train.checkpoint_every = 100
  c.train.async_checkpointing = False
  c.eval.num_examples = 1000        # test NLL on the first 1000 test images.
  c.eval.batch_size = 250
  c.eval.samples_per_class = 1      # the trainer's own grid; the experiment draws its own.
  c.eval.cfg_scale = 1.0            # no guidance: orders compared on the model alone.
  if args.smoke:
    c.train.batch_size = 8
    c.train.num_steps = args.steps or 2
    c.train.warmup_steps = 1
    c.train.log_every = 1
    c.train.checkpoint_every = 1000
    c.eval.num_examples = 16
    c.eval.batch_size = 16
    b.num_layers, b.dim, b.num_heads = 1, 32, 2
  if args.order in UNSUPPORTED:
    raise ValueError(f"order={args.order!r} is not part of this comparison: "
                     f"{UNSUPPORTED[args.order]}")
  c.order.name = args.order
  settings = ORDER_SETTINGS.get(args.order)
  if settings is not None:
    settings(c, c.train.num_steps)
  return c
