"""Hi-MAR: hierarchical masked AR with low-resolution token pivots (Zheng et al., ICML 2025;
HiDream-ai/himar at 1d378c1), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/himar.py:size=B --json
  python -m arjax.train --config configs/imagenet256/himar.py:smoke --workdir /tmp/himar_smoke

Model 'himar' (arjax/models/himar.py): one MAR encoder-decoder shared by the two phases (B 12+12
at 768, 12 heads; L 16+16 at 1024, 16 heads; H 20+20 at 1280, 16 heads; official himar_base /
large / huge) with the official per-phase block modulation, 64 buffer slots, 8x8 pivots of the
16-channel KL-16 latents; phase-1 head: MAR's MLP diffusion head (B 6 x 1024, L 8 x 1280,
H 12 x 1536; README --diffloss_d/w); phase-2 head: the global DiT diffusion head (B 6 x 512,
L 8 x 512, 8 heads; H 12 x 768, 12 heads; mlp ratio 4; README --gdm_d/--gdm_w/--head).
Sampling (README): phase 1 32 steps (cond_scale 4), phase 2 B 4 / L 4 / H 12 steps, linear CFG
B 2.5 (pivots 2.7), L 3.5 (3.5), H 3.2 (5.5). README counts 244M / 529M / 1090M are the
official script's trainable parameters (`requires_grad`: both heads included, the frozen VAE
and the DiT's fixed sin-cos table excluded); tests/test_configs.py checks ours within 1 %.
Pivot targets: give batch['pivots'] [B, 64, 16] (the official ones are KL-16 latents of the
256 px image bicubic-downsampled to 128 px, main_cache.py); without them the model averages 2x2
blocks of the grid latents, or with model.pivot_source='encode_lowres' and image batches encodes
that 128 px image with the tokenizer run's VAE. P(phase-2 row sees only the null pivots) ramps
from 1 to 0.75 over the first 100 epochs, once per epoch (official step_warmup, step_stage2_rate).
Training (main_himar.py defaults): AdamW, lr 1e-4 x batch / 256, weight decay 0.02, 100 warmup
epochs, 400 epochs, EMA 0.9999; diffusion_batch_mul 1 (the flag's default).
"""
from arjax.config import ConfigDict, base_config, parse_arg, sibling_config

mar = sibling_config(__file__, "mar.py")  # the KL-16 tokens, the training recipe, the smoke.

SIZES = {  # layers, heads, width, diffloss d, w, gdm d, w, heads, grid steps, cfg, pivot cfg.
    "B": (12, 12, 768, 6, 1024, 6, 512, 8, 4, 2.5, 2.7),
    "L": (16, 16, 1024, 8, 1280, 8, 512, 8, 4, 3.5, 3.5),
    "H": (20, 16, 1280, 12, 1536, 12, 768, 12, 12, 3.2, 5.5),
}


def get_config(arg=None):
  args = parse_arg(arg, size="B")
  if args.size not in SIZES:
    raise ValueError(f"himar size={args.size!r}; expected one of {sorted(SIZES)}")
  (layers, heads, width, hd, hw, gd, gw, gh, steps, cfg, pcfg) = SIZES[args.size]
  c = base_config()
  mar.kl16_tokens(c)
  c.sampling = ConfigDict(dict(name="himar"))
  m = c.model
  m.name = "himar"
  m.num_classes = 1000
  m.class_dropout = 0.1
  m.buffer_size = 64
  m.decoder_layers = layers
  m.mask_ratio_min = 0.7
  m.mask_ratio_std = 0.25
  m.pivot_grid = 8
  m.pivot_steps = 32
  m.pivot_cfg = pcfg
  m.grid_steps = steps
  m.pivot_drop = 0.75             # official 1 - step_stage2_rate (0.25), reached after:
  m.pivot_drop_warmup = 100 * 626  # official step_warmup 100 epochs (626 steps at batch 2048),
  m.pivot_drop_every = 626         # advanced once per epoch (model.epoch).
  m.pivot_source = "average"       # without batch['pivots']; 'encode_lowres' (official) needs
                                   # image batches and tokenizer.checkpoint.
  b = m.backbone
  b.num_layers, b.num_heads, b.dim = layers, heads, width
  b.norm, b.mlp, b.bias, b.norm_eps = "layernorm", "gelu", True, 1e-6
  b.position = "none"
  b.resid_dropout = 0.1
  b.ffn_dropout = 0.1
  h = m.head = ConfigDict()
  h.name = "diffusion"
  h.width, h.depth = hw, hd
  h.diffusion_batch_mul = 1
  h.num_sampling_steps = 100
  g = m.global_head = ConfigDict()
  g.name = "global_diffusion"
  g.width, g.depth, g.num_heads, g.mlp_ratio = gw, gd, gh, 4
  g.num_sampling_steps = 250
  mar.paper_training(c.train, lr=8e-4, epochs=400)
  e = c.eval
  e.cfg_scale = cfg
  e.cfg_schedule = "linear"
  e.cfg_by = "revealed"
  e.temperature = 1.0
  if args.smoke:
    mar.mnist_smoke(c, resolution=14)
    m.buffer_size = 4
    m.decoder_layers = 1
    m.pivot_grid = 7
    m.pivot_steps, m.grid_steps, m.pivot_cfg = 3, 2, 1.5
    m.pivot_drop_warmup, m.pivot_drop_every = 4, 2
    b.num_layers, b.num_heads, b.dim = 1, 2, 32
    b.resid_dropout = b.ffn_dropout = 0.0
    h.width, h.depth, h.num_sampling_steps = 32, 1, 4
    g.width, g.depth, g.num_heads, g.num_sampling_steps = 32, 1, 2, 4
  return c
