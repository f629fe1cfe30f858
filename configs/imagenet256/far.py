"""FAR: frequency autoregression with continuous tokens (Yu et al. 2025), ImageNet 256;
FAR-fast's shortcut head with `head=shortcut`.

  python -m arjax.inspect --config configs/imagenet256/far.py:size=B --json    # 208M
  python -m arjax.train --config configs/imagenet256/far.py:size=L --workdir W \
      --config.data.source=array_record:/data/imagenet_kl16/{split}.array_record
  python -m arjax.train --config configs/imagenet256/far.py:smoke --workdir /tmp/far_smoke
  python -m arjax.inspect --config configs/imagenet256/far.py:size=B,head=shortcut --json

Tokens: MAR's KL-16 latents (16x16 of 16 channels), pre-tokenized (tokenizer 'cached'). Model
'far' (arjax/models/far.py): MAR's encoder-decoder (B 12+12 at 768, 12 heads; L 16+16 at 1024;
H 20+20 at 1280, 16 heads), 64 buffer slots, no masking, a Linear level embedding, and the
diffusion head (diffusion_batch_mul 4, 100 respaced steps). Head sizes (depth x width): the
official train.sh (yuhuUSTC/FAR 9b49a51) trains B 6 x 1024, L 3 x 1024 and H 3 x 1024. B and H
give the README's counts (207.93M vs 208M, 811.7M vs 812M), but L's 3 x 1024 gives 426.4M
here, 5.5 % under the README's 451M (the converted official weights map one to one onto this
model: tests/convert/test_far.py). So `size=L` takes 8 x 1024, the depth at which the README's
count comes out (452.6M, +0.35 %; no depth at width 1024 lands closer); train.sh's FAR-L head is
`--config.model.head.depth=3` (also what converting its checkpoint needs).
tests/test_configs.py checks the counts within 1 %. The counts include the head and the level embedding
and exclude the VAE, as MAR's (the official main_far.py prints the trainable parameters of the
FAR module alone: the VAE is a separate, frozen module). Level inputs: area to k x k then
bicubic to 16 x 16, k ~ U{0..15} per batch. Sampling (sampler 'next_frequency'): 10 steps over
levels [0, 2, 3, ..., 10], linear CFG 1 + (w - 1) s / 10 with w = 3.0 (the README's FAR-L
command), temperature 0.8 -> 1.0 on FAR's cosine ramp. Training: as MAR (AdamW 0.9/0.95, wd
0.02, lr 1e-4 x batch / 256, 100 warmup epochs then constant, grad clip 3, EMA 0.9999) for 400
epochs (the README's command). Paper FID: 4.83 / 3.92 / 3.71.

`head=shortcut`: FAR-fast's shortcut-model head (arjax/heads/shortcut.py; MLP of the same
width and depth, 4 sampling steps); `head=flow` the plain flow head. The counts above are the
diffusion head's. `:smoke` runs on a fresh clone: 7x7 area-averaged MNIST pixels as one-channel
continuous tokens, a tiny encoder-decoder and head, a few steps, levels [0, 2, 4].
"""
from arjax.config import ConfigDict, base_config, parse_arg, sibling_config

mar = sibling_config(__file__, "mar.py")  # the KL-16 tokens, the training recipe, the smoke.

HEADS = ("diffusion", "flow", "shortcut")
SIZES = {  # layers (encoder = decoder), heads, width, diffloss depth, diffloss width, CFG.
    "B": (12, 12, 768, 6, 1024, 3.0),
    "L": (16, 16, 1024, 8, 1024, 3.0),  # the README command's 3 x 1024 gives 426M, not 451M.
    "H": (20, 16, 1280, 3, 1024, 3.0),
}


def get_config(arg=None):
  args = parse_arg(arg, size="B", head="diffusion")
  if args.size not in SIZES:
    raise ValueError(f"far size={args.size!r}; expected one of {sorted(SIZES)}")
  if args.head not in HEADS:
    raise ValueError(f"far head={args.head!r}; expected one of {list(HEADS)}")
  layers, heads, width, head_depth, head_width, cfg = SIZES[args.size]
  c = base_config()
  mar.kl16_tokens(c)
  m = c.model
  m.name = "far"
  m.num_classes = 1000
  m.class_dropout = 0.1
  m.buffer_size = 64
  m.decoder_layers = layers
  m.sample_levels = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10)
  m.temperature_start = 0.8
  m.level_loss_weight = False       # the official --loss_weight (off by default).
  b = m.backbone
  b.num_layers, b.num_heads, b.dim = layers, heads, width
  b.norm, b.mlp, b.bias, b.norm_eps = "layernorm", "gelu", True, 1e-6
  b.position = "none"
  b.resid_dropout = 0.1
  b.ffn_dropout = 0.1
  h = m.head = ConfigDict()
  h.name = "diffusion"
  h.width, h.depth = head_width, head_depth
  h.diffusion_batch_mul = 4
  h.num_sampling_steps = 100
  if args.head == "flow":
    h.name = "flow"
    del h["diffusion_batch_mul"]
    h.batch_mul, h.num_sampling_steps = 4, 20
  elif args.head == "shortcut":
    h.name = "shortcut"
    del h["diffusion_batch_mul"]
    h.batch_mul, h.num_sampling_steps = 4, 4
  mar.paper_training(c.train, lr=8e-4, epochs=400)
  e = c.eval
  e.cfg_scale = cfg
  e.cfg_schedule = "linear"         # 1 + (w - 1) s / S over the S level steps.
  e.temperature = 1.0
  if args.smoke:
    mar.mnist_smoke(c, resolution=7)
    m.buffer_size = 4
    m.decoder_layers = 1
    m.sample_levels = (0, 2, 4)
    b.num_layers, b.num_heads, b.dim = 1, 2, 32
    b.resid_dropout = b.ffn_dropout = 0.0
    h.width, h.depth = 32, 1
    h.num_sampling_steps = 2 if args.head == "shortcut" else 4
  return c
