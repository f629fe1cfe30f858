"""RandAR: random-order AR with position-instruction tokens (Pang et al. 2025), ImageNet 256.

  python -m arjax.inspect --config configs/imagenet256/randar.py:size=L --json   # 343M
  python -m arjax.train --config configs/imagenet256/randar.py:size=L --workdir W \
      --config.data.source=array_record:/data/imagenet_vq16/{split}.array_record

LlamaGen's GPT and VQ-16 tokens (derived from `llamagen.py`) with one learned
position-instruction vector, rotated by the 2D RoPE of the position it asks for; sequence
[class, P_pi0, x_pi0, P_pi1, x_pi1, ...] under a causal mask (order 'randar'). Sampling: 88
parallel steps (cosine schedule), random order, CFG rising linearly from 1 to 4.
Sizes (layers/heads/width -> params): L 24/16/1024 343M, XL 36/20/1280 775M, XXL 48/24/1536
1.4B. Paper FID: 2.55 / 2.25 / 2.15.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {k: llamagen.SIZES[k][:3] for k in ("L", "XL", "XXL")}  # layers, heads, width.


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "randar", "L")
  c = llamagen.llamagen_config(*SIZES[args.size], 4.0, smoke=args.smoke)
  c.model.name = "ordered_ar"
  c.order.name = "randar"
  c.order.schedule = "randar"         # n_k = min(floor((1 - cos(pi/2 (k+1)/K)) N) + 1, N).
  c.order.num_steps = 88              # parallel decoding steps.
  c.eval.cfg_schedule = "linear"      # CFG 1 -> 4 with the fraction of tokens decoded.
  t = c.train
  t.batch_size = 1024
  t.num_steps = 360_000               # about 300 epochs.
  t.lr = 4e-4
  t.weight_decay = 0.05
  t.warmup_steps = 50_000
  t.end_lr_ratio = 0.0                # the paper decays linearly; arjax decays by cosine.
  if args.smoke:
    c.order.num_steps = 16
    t.batch_size, t.num_steps, t.warmup_steps, t.lr = 8, 4, 0, 1e-3
  return c
