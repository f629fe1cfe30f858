"""FlowAR: next-scale prediction with per-scale flow matching (Ren et al. 2024), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/flowar.py:size=L --json
  python -m arjax.train --config configs/imagenet256/flowar.py:size=S --workdir W \
      --config.data.source=array_record:/data/imagenet_kl16/{split}.array_record
  python -m arjax.train --config configs/imagenet256/flowar.py:smoke --workdir /tmp/flowar_smoke

Tokens: KL-16 latents of MAR's VAE (16x16 of 16 channels; the paper's tokenizer), pre-tokenized
('cached' tokenizer, latent_dim 16). Model 'flowar' (arjax/models/flowar.py): scales 1,2,4,8,16,
each an area downsample of the finest latent; VAR-style block-causal AR blocks at width C (heads
of 64) and the spatial-adaLN flow head ('spatial_flow').

Sizes. The paper gives only totals (S 170M, B 300M, L 589M, H 1.9B) and the official repository
held no code when read, so the depths below are NOT the official architecture: they are a
width from VAR's ladder (heads of 64), a 2-block head, and the AR depth and head width fitted
so that the whole generator (AR transformer + flow head + embeddings, VAE excluded) lands within
1 % of the paper's total (tests/test_configs.py):

  S: C 768,  14 AR blocks, head Dh 704: 170,132,600 (+0.08 %)
  B: C 1024, 14 AR blocks, head Dh 896: 299,323,504 (-0.23 %)
  L: C 1280, 19 AR blocks, head Dh 704: 588,945,740 (-0.01 %)
  H: C 1920, 28 AR blocks, head Dh 768: 1,900,351,192 (+0.02 %)

Training (paper): 400 epochs, batch 2048, base lr 5e-5 (x batch / 256 = 4e-4), class dropout
0.1; the remaining optimiser settings follow xAR's config (same authors; unverified for FlowAR).
Sampling ('next_scale', continuous path): 5 AR passes, 25 Euler steps per scale (S, B, L; H 50),
constant CFG 4.3 (S) / 2.4 (L, H) on the velocity (B: 2.4, not stated in the paper).

`:smoke` runs on a fresh clone: the continuous 14x14 area-averaged MNIST pixels (pixel
tokenizer, continuous, one channel), scales 1,2,4,7,14, depth 2 at width 32, a 1-block head.
"""
from arjax.config import ConfigDict, base_config, parse_arg, sibling_config

mar = sibling_config(__file__, "mar.py")  # the KL-16 tokens, the training recipe, the smoke.

SIZES = {  # AR width, AR depth, head width, CFG, ODE steps per scale (head: 2 blocks).
    "S": (768, 14, 704, 4.3, 25),
    "B": (1024, 14, 896, 2.4, 25),
    "L": (1280, 19, 704, 2.4, 25),
    "H": (1920, 28, 768, 2.4, 50),
}
HEAD_DEPTH = 2
SCALES = [1, 2, 4, 8, 16]


def get_config(arg=None):
  args = parse_arg(arg, size="L")
  if args.size not in SIZES:
    raise ValueError(f"flowar size={args.size!r}; expected one of {sorted(SIZES)}")
  width, depth, head_width, cfg, steps = SIZES[args.size]
  c = base_config()
  del c.model.backbone  # the AR blocks are VAR's (arjax.models.var); fields under model.
  mar.kl16_tokens(c)
  c.order.name = "scales"
  c.order.scales = list(SCALES)
  m = c.model
  m.name = "flowar"
  m.depth = depth
  m.width = width
  m.num_classes = 1000
  m.class_dropout = 0.1
  h = m.head = ConfigDict()
  h.name = "spatial_flow"
  h.depth = HEAD_DEPTH
  h.width = head_width
  h.num_sampling_steps = steps
  h.solver = "euler"
  h.time_sampling = "uniform"
  # lr 5e-5 x 2048 / 256; the rest as xAR's (same authors; unverified for FlowAR).
  mar.paper_training(c.train, lr=4e-4, epochs=400, b2=0.96, grad_clip=1.0)
  e = c.eval
  e.cfg_scale = cfg
  e.temperature = 1.0
  if args.smoke:
    mar.mnist_smoke(c, resolution=14)
    c.order.scales = [1, 2, 4, 7, 14]
    m.depth, m.width, m.num_heads = 2, 32, 2
    h.depth, h.width, h.num_heads, h.num_sampling_steps = 1, 32, 2, 4
  return c
