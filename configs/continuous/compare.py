"""Continuous vs discrete tokens at one budget on MNIST (experiments/continuous.py -> docs/continuous.md).

  python -m arjax.train --config configs/continuous/compare.py:row=discrete --workdir W
  python -m arjax.train --config configs/continuous/compare.py:row=mar,steps=1000 --workdir W

Rows (every row: 4 transformer blocks of width 96, 4 heads; batch 32; AdamW at lr 2e-3, 100
warmup steps, cosine to 0.1; `steps` steps; CFG 2.0):

  discrete   raster_ar, categorical head over the VQ tokenizer's 7x7 codes (vocab 512; the
             model of configs/tokenizers/raster_on_tokens.py),
  flow, diffusion, gmm
             raster_ar over the KL tokenizer's 7x7x4 latents with that continuous head (the
             model of configs/continuous/causal.py: adaLN MLP 128 x 3 for flow / diffusion,
             16 components for gmm),
  mar        MAR (arjax/models/mar.py) over the same latents with the diffusion head
             (128 x 3): 2 encoder + 2 decoder blocks of width 96 (4 blocks in all, as the
             raster rows), 8 buffer slots, MAR's mask-ratio sampler; sampled at 49 steps of
             the cosine reveal by default (one token per step; the order refuses more steps
             than the 49 tokens, so MAR's 64 is not possible here; the experiment re-samples
             at 8 / 16 / 49); the diffusion head's x_0 clamp clip_denoised 2.0 (as the
             diffusion row).
  xar        xAR (arjax/models/xar.py) over the same latents: 2 + 2 blocks of width 96,
             entities of one token (7 is prime: the only other cell is the whole grid), the
             flow row's Euler ODE with 20 steps, CFG 2.0 ramped over the entities.
  arinar     MAR's backbone (as the mar row) with the ARINAR head (inner width 128, 1 block,
             4 heads, 4 components per feature), 49 reveal steps.

Arguments: row, steps (training steps, default 1000), lr, tok_kl / tok_vq (tokenizer workdirs),
cache_kl / cache_vq (token caches with '{split}'), tiny (a 1-block, width-32 model and a few
steps over the given caches: the experiment's --smoke), smoke (a few steps on a fresh clone:
the stand-ins of the configs above, pixel tokens instead of the tokenizer runs).
"""
from arjax.config import ConfigDict, parse_arg, sibling_config

on_tokens = sibling_config(__file__, "../tokenizers/raster_on_tokens.py")
causal = sibling_config(__file__, "causal.py")
mar = sibling_config(__file__, "../imagenet256/mar.py")
arinar = sibling_config(__file__, "../imagenet256/arinar.py")
xar = sibling_config(__file__, "../imagenet256/xar.py")

ROWS = ("discrete", "flow", "diffusion", "gmm", "mar", "xar", "arinar")
# The diffusion head's x_0 clip at sampling (model.head.clip_denoised; ADM's clip_denoised at
# the data range): the cached KL latents x scale factor lie within |x| <= 1.571 (all 60,000
# training images; test 1.485); 2.0 bounds them. Without it the first respaced reverse step from t = 999 multiplies
# the eps error by ~316 at this budget and the chain diverges (docs/continuous.md).
CLIP_DENOISED = 2.0


def get_config(arg=None):
  args = parse_arg(arg, row="discrete", steps=1000, lr=2e-3,
                   tok_kl="workdirs/tok_kl", cache_kl="workdirs/mnist_kl/{split}.array_record",
                   tok_vq="workdirs/tok_vq", cache_vq="workdirs/mnist_vq/{split}.array_record",
                   tiny=False)
  if args.row not in ROWS:
    raise ValueError(f"config argument row={args.row!r}; expected one of {list(ROWS)}")
  if int(args.steps) < 1:
    raise ValueError(f"config argument steps={args.steps!r}; expected an integer >= 1")
  small = args.smoke or args.tiny
  if args.row == "discrete":
    c = on_tokens.get_config(f"tokenizer={args.tok_vq},cache={args.cache_vq},vocab_size=512,"
                             f"grid=7,smoke={args.smoke}")
  elif args.row in ("flow", "diffusion", "gmm"):
    c = causal.get_config(f"head={args.row},tokenizer={args.tok_kl},cache={args.cache_kl},"
                          f"latent_dim=4,grid=7,smoke={args.smoke}")
  elif args.row == "xar":
    c = xar.get_config(f"size=B,smoke={args.smoke}")
    if not args.smoke:
      c.data.source = f"array_record:{args.cache_kl}"
      c.tokenizer = ConfigDict(dict(name="cached", vocab_size=0, grid=7, latent_dim=4,
                                    checkpoint=args.tok_kl))
      c.model.num_classes = 10
    m = c.model
    m.entity, m.entity_size = "cell", 1   # 7 is prime: 1x1 cells (49 entities) or one 7x7 cell.
    m.decoder_layers = 2
    m.sde = False                       # the flow row's Euler ODE, 20 steps.
    m.head.num_sampling_steps = 20
    m.head.solver = "euler"
    b = m.backbone
    b.mlp_dim = 256                     # SwiGLU int(8 D / 3) at D = 96.
    b.resid_dropout = b.ffn_dropout = 0.0
    c.eval.cfg_scale = 2.0
    c.eval.temperature = 1.0
    c.train.ema_decay = 0.0
    c.train.b1, c.train.b2, c.train.weight_decay = 0.9, 0.999, 0.0
  else:
    if args.row == "arinar":
      c = arinar.get_config(f"smoke={args.smoke}")
    else:
      c = mar.get_config(f"size=B,head=diffusion,smoke={args.smoke}")
    if not args.smoke:
      c.data.source = f"array_record:{args.cache_kl}"
      c.tokenizer = ConfigDict(dict(name="cached", vocab_size=0, grid=7, latent_dim=4,
                                    checkpoint=args.tok_kl))
      c.model.num_classes = 10
    m = c.model
    m.buffer_size = 8
    m.decoder_layers = 2
    b = m.backbone
    b.resid_dropout = b.ffn_dropout = 0.0  # no dropout in the raster rows either.
    h = m.head
    if args.row == "arinar":            # ARINAR's inner AR over the 4 channels.
      h.width, h.depth, h.num_heads, h.num_components = 128, 1, 4, 4
    else:
      h.width, h.depth = 128, 3         # the causal rows' diffusion head.
      h.diffusion_batch_mul, h.num_sampling_steps = 4, 100
      h.clip_denoised = CLIP_DENOISED
    c.order.num_steps = 49            # one token per step: the most 49 tokens allow.
    c.eval.cfg_scale = 2.0
    c.eval.temperature = 1.0
    c.train.ema_decay = 0.0             # no EMA in the raster rows.
    c.train.b1, c.train.b2, c.train.weight_decay = 0.9, 0.999, 0.0
  # The shared budget and backbone of every row.
  if args.row == "diffusion":
    c.model.head.clip_denoised = CLIP_DENOISED
  b = c.model.backbone
  if args.row in ("mar", "arinar", "xar"):
    b.num_layers, b.num_heads, b.dim = 2, 4, 96
  else:
    b.num_layers, b.num_heads, b.dim = 4, 4, 96
  t = c.train
  t.batch_size = 32
  t.num_steps = int(args.steps)
  t.lr = float(args.lr)
  t.warmup_steps = min(100, max(1, int(args.steps) // 10))
  t.schedule, t.end_lr_ratio = "cosine", 0.1
  t.grad_clip = 1.0
  t.log_every = 50
  t.checkpoint_every = 250               # resumable within a row.
  t.eval_every = 100_000                 # the trainer evaluates once, at the end.
  c.eval.num_examples = 500              # test NLL / head loss on the first 500 test images.
  c.eval.batch_size = 100
  c.eval.samples_per_class = 4
  c.eval.cfg_scale = 2.0
  if small:
    b.num_layers, b.num_heads, b.dim = 1, 2, 32
    if args.row in ("mar", "arinar", "xar"):
      c.model.decoder_layers = 1
    if args.row in ("mar", "arinar"):
      c.model.buffer_size = 4
    if args.row in ("flow", "diffusion", "mar"):
      c.model.head.width, c.model.head.depth, c.model.head.num_sampling_steps = 32, 1, 4
    if args.row == "arinar":
      c.model.head.width, c.model.head.num_heads = 16, 2
    if args.row == "xar":
      c.model.backbone.mlp_dim = 64
      c.model.head.num_sampling_steps = 4
    if args.row in ("mar", "arinar"):
      c.order.num_steps = 4
    t.batch_size, t.log_every, t.checkpoint_every = 8, 2, 4
    t.num_steps = min(t.num_steps, 4)
    t.warmup_steps = 0
    c.eval.num_examples, c.eval.batch_size, c.eval.samples_per_class = 64, 32, 1
  return c
