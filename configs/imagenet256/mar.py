"""MAR: masked autoregressive generation with the diffusion loss (Li et al. 2024), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/mar.py:size=B --json    # 208M
  python -m arjax.train --config configs/imagenet256/mar.py:size=B --workdir W \
      --config.data.source=array_record:/data/imagenet_kl16/{split}.array_record
  python -m arjax.train --config configs/imagenet256/mar.py:smoke --workdir /tmp/mar_smoke
  python -m arjax.convert mar --checkpoint checkpoint-last.pth --size B --workdir W

Tokens: KL-16 latents of MAR's VAE (16x16 = 256 tokens of 16 channels, posterior x 0.2325),
given pre-tokenized (tokenizer 'cached', latent_dim 16). Model 'mar' (arjax/models/mar.py):
encoder + decoder ViT blocks (B 12+12 at 768, 12 heads; L 16+16 at 1024, 16 heads; H 20+20 at
1280, 16 heads), 64 buffer slots, and the diffusion head (B 6 x 1024, L 8 x 1280, H 12 x 1536;
diffusion_batch_mul 4, 100 respaced DDPM steps). The parameter counts 208M / 479M / 943M of
MAR's table include the diffusion head and exclude the VAE; tests/models/test_mar.py checks them
(`python -m arjax.inspect` reports them). Sampling: 64 steps of MAR's cosine reveal in a random
order (order 'masked', reveal 'mar'), linear CFG over the revealed fraction (eval.cfg_by =
'revealed'), w = 2.9 / 3.0 / 3.2, temperature 1.0. Training: AdamW (0.9, 0.95), weight decay
0.02, lr 1e-4 x batch / 256 (8e-4 at batch 2048), 100 warmup epochs then constant, grad clip 3,
800 epochs, parameter EMA 0.9999. Paper FID (256 AR steps, CFG): 2.31 /
1.78 / 1.55.

`head=flow|gmm` swaps the head (any continuous head; `diffusion` is MAR's and the default; the
parameter counts above are the diffusion head's). `:smoke` runs on a fresh clone (under a minute): the tokens are the continuous values of the
7x7 area-averaged MNIST pixels (pixel tokenizer with `continuous=True`, one channel), a tiny
encoder-decoder and head, a few steps.
"""
from arjax.config import ConfigDict, base_config, parse_arg

EPOCH = 626  # steps of one ImageNet epoch (1.28M images) at batch 2048.

HEADS = ("diffusion", "flow", "gmm")  # the continuous heads (arjax.heads); MAR's is diffusion.
SIZES = {  # layers (encoder = decoder), heads, width, diffloss depth, diffloss width, CFG.
    "B": (12, 12, 768, 6, 1024, 2.9),
    "L": (16, 16, 1024, 8, 1280, 3.0),
    "H": (20, 16, 1280, 12, 1536, 3.2),
}


def kl16_tokens(c):
  """The tokens of the ImageNet configs on continuous latents (MAR, FAR, xAR, FlowAR, Hi-MAR):
  MAR's KL-16 latents at 256 px, pre-tokenized into an ArrayRecord cache."""
  c.tokenizer.name = "cached"
  c.tokenizer.vocab_size = 0        # continuous tokens.
  c.tokenizer.grid = 16             # KL-16 at 256 px: 16x16 tokens.
  c.tokenizer.latent_dim = 16       # KL-16 channels.
  c.data.source = "array_record:/data/imagenet_kl16/{split}.array_record"
  c.data.pp = ""


def paper_training(t, lr, epochs, b2=0.95, grad_clip=3.0):
  """The training recipe these papers share (MAR's main_mar.py): AdamW (0.9, b2), weight decay
  0.02, batch 2048, `epochs` epochs with 100 warm-up epochs then a constant lr, EMA 0.9999."""
  t.batch_size = 2048
  t.lr = lr
  t.b1, t.b2 = 0.9, b2
  t.weight_decay = 0.02
  t.grad_clip = grad_clip
  t.num_steps = epochs * EPOCH
  t.warmup_steps = 100 * EPOCH
  t.end_lr_ratio = 1.0              # constant after warmup.
  t.ema_decay = 0.9999


def mnist_smoke(c, resolution):
  """`:smoke` on a fresh clone: the continuous values of the `resolution`^2 area-averaged MNIST
  pixels as one-channel tokens, 10 classes, 4 steps of batch 8, a small evaluation."""
  c.data.source = "mnist"
  c.tokenizer = ConfigDict(dict(name="pixel", levels=8, resolution=resolution, channels=1,
                                continuous=True))
  c.model.num_classes = 10
  t, e = c.train, c.eval
  t.batch_size, t.num_steps, t.lr, t.warmup_steps = 8, 4, 1e-3, 0
  t.log_every, t.checkpoint_every, t.ema_decay = 2, 1000, 0.0
  e.num_examples, e.batch_size, e.samples_per_class = 64, 32, 1
  e.cfg_scale = 2.0


def get_config(arg=None):
  args = parse_arg(arg, size="B", head="diffusion")
  if args.size not in SIZES:
    raise ValueError(f"mar size={args.size!r}; expected one of {sorted(SIZES)}")
  if args.head not in HEADS:
    raise ValueError(f"mar head={args.head!r}; expected one of {list(HEADS)}")
  layers, heads, width, head_depth, head_width, cfg = SIZES[args.size]
  c = base_config()
  kl16_tokens(c)
  c.order.name = "masked"
  c.order.reveal = "mar"            # cosine count, random order (MAR's sample_tokens).
  c.order.num_steps = 64            # MAR's default AR steps (256 for its best FID).
  m = c.model
  m.name = "mar"
  m.num_classes = 1000
  m.class_dropout = 0.1             # MAR's label_drop_prob.
  m.buffer_size = 64
  m.decoder_layers = layers
  m.mask_ratio_min = 0.7
  m.mask_ratio_std = 0.25
  b = m.backbone
  b.num_layers, b.num_heads, b.dim = layers, heads, width
  b.norm, b.mlp, b.bias, b.norm_eps = "layernorm", "gelu", True, 1e-6  # timm ViT blocks.
  b.position = "none"               # MAR adds its own learned position tables.
  b.resid_dropout = 0.1             # MAR's proj_drop (its attn_drop 0.1 has no counterpart).
  b.ffn_dropout = 0.1
  h = m.head = ConfigDict()
  h.name = "diffusion"              # any continuous head: diffusion | flow | gmm.
  h.width, h.depth = head_width, head_depth
  h.diffusion_batch_mul = 4
  h.num_sampling_steps = 100
  if args.head == "flow":           # the same MLP predicting the velocity (NextStep-1 style).
    h.name = "flow"
    del h["diffusion_batch_mul"]
    h.batch_mul, h.num_sampling_steps = 4, 20
  elif args.head == "gmm":          # GIVT's mixture: no inner loop.
    h = m.head = ConfigDict(dict(name="gmm", num_components=16))
  paper_training(c.train, lr=8e-4, epochs=800)  # lr 1e-4 x 2048 / 256.
  e = c.eval
  e.cfg_scale = cfg
  e.cfg_schedule = "linear"
  e.cfg_by = "revealed"             # 1 + (w - 1) (N - masked after the step) / N.
  e.temperature = 1.0
  if args.smoke:
    mnist_smoke(c, resolution=7)
    m.buffer_size = 4
    m.decoder_layers = 1
    b.num_layers, b.num_heads, b.dim = 1, 2, 32
    b.resid_dropout = b.ffn_dropout = 0.0
    if args.head != "gmm":
      h.width, h.depth, h.num_sampling_steps = 32, 1, 4
    c.order.num_steps = 4
  return c
