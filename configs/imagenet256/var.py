"""VAR class-conditional next-scale prediction at ImageNet 256 (Tian et al. 2024), paper depths.

  python -m arjax.inspect --config configs/imagenet256/var.py:depth=16 --json
  python -m arjax.convert var --checkpoint var_d16.pth --vae vae_ch160v4096z32.pth --size 16 \
      --workdir W                                         # the released weights (docs/evaluation.md)
  python -m arjax.train --config configs/imagenet256/var.py:depth=16 --workdir W \
      --config.tokenizer.checkpoint=VAE_RUN \
      --config.data.source=array_record:/data/imagenet_var/{split}.array_record

Tokens: VAR's multi-scale VQ-VAE (configs/tokenizers/var_vqvae.py; 4096 codes of dim 32, scales
1,2,3,4,5,6,8,10,13,16 on a 16x16 latent, N = 680), pre-tokenized by `python -m arjax.tokenize`
('cached' tokenizer with tokenizer.scales); the generator reads its teacher-forcing inputs through
the frozen tokenizer run `tokenizer.checkpoint`. Depths d -> width 64 d, d heads, drop path
0.1 d / 24 -> parameters (paper): 16 310M, 20 600M, 24 1.0B, 30 2.0B; FID (paper, cfg): 3.30 /
2.57 / 2.09 / 1.92. Sampling: 10 KV-cached passes, CFG ramp (1 + t) l_c - t l_u with
t = cfg k / 9, i.e. eval.cfg_scale = 1 + cfg on the linear-by-steps schedule (VAR's FID setting
cfg 1.5, top_k 900, top_p 0.96 -> cfg_scale 2.5).
`:smoke` keeps the layout (depth 2, width 32) on scales 1,2,3,4,5,7 of a 7x7 MNIST token map
(builds and inspects; training needs a multiscale tokenizer run as tokenizer.checkpoint).
"""
from arjax.config import base_config, parse_arg

DEPTHS = {16: 1.5, 20: 1.5, 24: 1.5, 30: 1.5}  # depth -> VAR's cfg for FID (before top-k/p).
SCALES = [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]


def get_config(arg=None):
  args = parse_arg(arg, depth="16", size="")  # size=d: the same as depth=d (the paper-size tests).
  depth = args.size or args.depth
  if str(depth) not in {str(d) for d in DEPTHS}:
    key = "size" if args.size else "depth"
    raise ValueError(f"var {key}={depth!r}; expected one of {sorted(DEPTHS)}")
  depth = int(depth)
  return var_config(depth, smoke=args.smoke)


def var_config(depth: int, smoke: bool = False):
  c = base_config()
  del c.model.backbone  # VAR's blocks are its own (arjax.models.var); fields under model.
  c.tokenizer.name = "cached"
  c.tokenizer.vocab_size = 4096
  c.tokenizer.grid = 16
  c.tokenizer.scales = list(SCALES)
  c.order.name = "scales"
  c.order.scales = list(SCALES)
  c.model.name = "var"
  c.model.depth = depth
  c.model.code_dim = 32
  c.model.num_classes = 1000
  c.model.class_dropout = 0.1
  c.data.source = "tfds:imagenet2012"
  c.data.pp = "resize(256)"
  t = c.train
  t.batch_size = 768 if depth <= 20 else 1024   # VAR's bs for d16/d20 and d24/d30.
  t.lr = 8e-5 * t.batch_size / 256              # tblr 8e-5 scaled by the batch (VAR's rule).
  t.weight_decay = 0.05
  t.b1, t.b2 = 0.9, 0.95
  t.grad_clip = 2.0
  t.num_steps = {16: 200, 20: 250, 24: 350, 30: 350}[depth] * 1_281_167 // t.batch_size
  t.warmup_steps = t.num_steps // 50
  t.end_lr_ratio = 0.0
  e = c.eval
  e.cfg_scale = 1.0 + DEPTHS[depth]
  e.cfg_schedule = "linear"
  e.cfg_by = "steps"
  e.top_k = 900
  e.top_p = 0.96
  if smoke:
    c.data.source = "mnist"
    c.data.pp = ""
    c.tokenizer.vocab_size = 64
    c.tokenizer.grid = 7
    c.tokenizer.scales = [1, 2, 3, 4, 5, 7]
    c.order.scales = [1, 2, 3, 4, 5, 7]
    c.model.depth = 2
    c.model.width = 32
    c.model.num_heads = 2
    c.model.code_dim = 8
    c.model.num_classes = 10
    t.batch_size, t.num_steps, t.log_every, t.checkpoint_every = 8, 4, 2, 1000
    t.lr, t.warmup_steps = 1e-3, 0
    e.top_k, e.top_p = 0, 1.0
    e.num_examples, e.batch_size, e.samples_per_class = 64, 32, 1
  return c
