"""Generators of experiments/next_scale.py on one multi-scale token cache of bundled MNIST
(configs/next_scale/tokenizer.py: scales 1,2,3,4,5,7 of a 7x7 latent, N = 104 tokens, 32 codes).

  python -m arjax.train --config configs/next_scale/compare.py:model=var,tokenizer=T,cache=C \
      --workdir W/var
  python -m arjax.train --config configs/next_scale/compare.py:model=raster,tokenizer=T,cache=C \
      --workdir W/raster

model (a row of the experiment's table; every row has the same width, depth, batch, steps,
optimiser, class dropout and sampling settings):
  var     VAR (arjax.models.var, order 'scales'): 6 KV-cached passes, a scale per pass.
  raster  raster AR ('raster_ar') over the same 104 tokens, scales concatenated (scale 1
          first, each map row-major): 104 KV-cached passes.
  flexvar FlexVAR (arjax.models.flexvar) on the NON-residual tokens of its own tokenizer run
          (configs/next_scale/tokenizer.py:residual=false, trained the same way; the
          experiment's `tokenizer_flat` and `cache_flat`): 6 KV-cached passes; a token cache
          trains at the one list 1,2,3,4,5,7 (no random lists); position map 14x14 (sampling
          up to a 14x14 latent).
  hmar    HMAR (arjax.models.hmar) on VAR's residual tokens: Markovian block-diagonal mask
          (markov_window=0) plus the refinement branch (the last 2 of 4 blocks duplicated);
          mask schedule 1;1,3;4,5;16;25;49 (scales 2 and 3 in two steps): 8 passes.
A new next-scale variant is one more entry in ROWS (and in FLAT if it reads non-residual
tokens).

Arguments: tokenizer=WORKDIR of the tokenizer run (decodes samples; VAR reads its frozen
codebook and phi convs for the teacher-forcing inputs), cache=PATH with '{split}' (from
`python -m arjax.tokenize --tokenizer_workdir T --data mnist --out C`), steps, smoke (tiny width
and steps; still needs a tokenizer run and a cache: `experiments/next_scale.py --smoke` makes
them).
"""
from arjax.config import base_config, parse_arg

SCALES = [1, 2, 3, 4, 5, 7]
VOCAB, GRID = 32, 7
WIDTH, DEPTH, HEADS = 96, 4, 4  # small: the 2-core CPU is shared by ~10 jobs.


def _var(c):
  del c.model.backbone  # VAR's blocks are its own (arjax.models.var).
  c.order.name = "scales"
  c.order.scales = list(SCALES)
  c.model.name = "var"
  c.model.depth = DEPTH
  c.model.width = WIDTH
  c.model.num_heads = HEADS
  c.model.code_dim = 32  # the tokenizer's quantizer.code_dim (configs/tokenizers/multiscale).
  c.model.drop_path = 0.0


def _raster(c):
  b = c.model.backbone
  b.dim, b.num_heads, b.num_layers, b.multiple_of = WIDTH, HEADS, DEPTH, 32


def _flexvar(c):
  _var(c)
  c.model.name = "flexvar"
  c.model.random_scales = False  # a token cache holds one list (arjax.models.flexvar).
  c.model.pos_grid = 14          # FlexVAR's map is 2x its 16 grid; here 2x the 7x7 grid.
  c.model.max_tokens = sum(s * s for s in SCALES)
  # The random-list rule is checked against the 7x7 grid even when unused (its smoke ranges).
  c.model.draw_lo, c.model.draw_hi, c.model.draw_count = [3, 5], [4, 6], [2, 1]
  # The released sampler draws the sides it was trained at and takes the top-1 token elsewhere
  # (arjax.models.flexvar sampling_rule): here the trained sides are this list, the grid is 7.
  c.model.sampled_sides = list(SCALES)
  c.model.max_pn = SCALES[-1]


def _hmar(c):
  _var(c)
  c.model.name = "hmar"
  c.order.markovian = True
  c.order.markov_window = 0
  c.model.refine_blocks = DEPTH // 2  # HMAR d16: the last 8 of 16 blocks.
  c.model.refine_weight = 1.0
  c.model.mask_schedule = "1;1,3;4,5;16;25;49"


ROWS = {"var": _var, "raster": _raster, "flexvar": _flexvar, "hmar": _hmar}
FLAT = {"flexvar"}  # rows on the non-residual tokenizer's tokens.


def get_config(arg=None):
  args = parse_arg(arg, model="var", tokenizer="workdirs/next_scale/tokenizer",
                   cache="workdirs/next_scale/cache/{split}.array_record", steps=1500)
  if args.model not in ROWS:
    raise ValueError(f"next_scale model={args.model!r}; expected one of {sorted(ROWS)}")
  c = base_config()
  c.data.source = f"array_record:{args.cache}"
  c.data.pp = ""
  c.tokenizer.name = "cached"
  c.tokenizer.vocab_size = VOCAB
  c.tokenizer.grid = GRID
  c.tokenizer.scales = list(SCALES)
  c.tokenizer.checkpoint = args.tokenizer
  c.model.num_classes = 10
  c.model.class_dropout = 0.1
  ROWS[args.model](c)
  t = c.train
  t.batch_size = 32
  t.num_steps = int(args.steps)
  t.lr = 2e-3
  t.schedule = "constant"  # after warm-up: a chunked or extended run resumes exactly.
  t.warmup_steps = 100
  t.weight_decay = 0.05
  t.b1, t.b2 = 0.9, 0.95
  t.grad_clip = 2.0
  t.log_every = 100
  t.eval_every = 1000
  t.checkpoint_every = 100
  e = c.eval
  e.num_examples = 1000
  e.cfg_scale = 2.0  # the same constant guidance for every row (no ramp).
  e.temperature = 1.0
  e.top_k, e.top_p = 0, 1.0
  # Test bits/token only: the trainer's sample_quality evaluator needs the bundled data as
  # data.source (here the token cache); experiments/next_scale.py scores the samples itself.
  e.evaluators = dict(bits_per_dim={"every": 0})
  if args.smoke:
    if args.model != "raster":
      c.model.depth, c.model.width, c.model.num_heads = 1, 32, 2
    else:
      b = c.model.backbone
      b.num_layers, b.dim, b.num_heads = 1, 32, 2
    if args.model == "hmar":
      c.model.refine_blocks = 1
    # steps stay the argument's (the experiment trains in chunks of a few steps).
    t.batch_size, t.log_every, t.eval_every = 8, 2, 100_000
    t.checkpoint_every, t.warmup_steps = 2, 0
    e.num_examples, e.batch_size, e.samples_per_class = 64, 32, 1
  return c
