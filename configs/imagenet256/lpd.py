"""LPD: locality-aware parallel decoding (Zhang et al. 2025), ImageNet 256, paper sizes.

  python -m arjax.inspect --config configs/imagenet256/lpd.py:size=L --json   # 337M
  python -m arjax.train --config configs/imagenet256/lpd.py:size=L --workdir W \
      --config.data.source=array_record:/data/imagenet_vq16/{split}.array_record

LlamaGen's VQ-16 tokens; a decoder-only ViT (MAR codebase: LayerNorm, biases, GELU MLP, no
RoPE) over [class, generated content] + position queries (a learned [MASK] embedding plus the
target's learned position embedding), with a LayerNorm on the inputs; order 'lpd' (queries of
one step see each other and all earlier content; 20 steps with LPD's group-size table).
Sizes (layers/heads/width -> params): L 24/16/1024 337M, XL 36/20/1280 752M, XXL 48/24/1536
1.4B. README FID (20 steps): 2.40 / 2.10 / 2.00. Sampling uses LPD's locality-aware order
(order.locality_orders = 64 precomputed orders, the default; arjax/orders/locality.py);
order.locality_orders=0 samples uniformly random orders instead. Training uses uniformly random
orders, as LPD does.
"""
from arjax.config import sibling_config

llamagen = sibling_config(__file__, "llamagen.py")

SIZES = {k: llamagen.SIZES[k][:3] for k in ("L", "XL", "XXL")}  # layers, heads, width.


def get_config(arg=None):
  args = llamagen.parse_size(arg, SIZES, "lpd", "L")
  c = llamagen.llamagen_config(*SIZES[args.size], 4.8, smoke=args.smoke)
  c.model.name = "ordered_ar"
  c.model.learned_pos = True          # learned position embedding of the slot's cell.
  c.model.input_norm = True           # LayerNorm on the inputs (z_proj_ln).
  c.model.token_dropout = 0.0
  b = c.model.backbone
  b.norm, b.norm_eps, b.mlp, b.bias = "layernorm", 1e-6, "gelu", True  # ViT blocks, mlp 4D.
  b.position = "none"                 # no RoPE: positions come from the learned table.
  c.order.name = "lpd"                # 20 steps of LPD's group sizes at 256 tokens.
  c.eval.cfg_schedule = "linear"      # CFG rising linearly with the tokens decoded.
  t = c.train
  t.num_steps = 450 * 5005            # 450 epochs at batch 256.
  t.warmup_steps = 50 * 5005
  t.lr = 1e-4
  t.end_lr_ratio = 0.1                # cosine to 1e-5.
  if args.smoke:
    t.batch_size, t.num_steps, t.warmup_steps, t.lr = 8, 4, 0, 1e-3
  return c
